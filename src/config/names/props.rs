//! `normalize_name`'s fast path for plain valid names (`is_plain_valid`) against the whole way
//! (`idna` and every check): the same name or the same error text for every input, generated
//! (property tests) and exhaustive over short strings of the characters where they could differ.

use proptest::prelude::*;

use super::{is_plain_valid, normalize};

/// Both ways give the same answer, and a name the fast path takes is one `idna` returns
/// unchanged and the whole way takes as it is.
fn same_answer(s: &str) {
    let fast = normalize(s, true);
    let slow = normalize(s, false);
    assert_eq!(fast, slow, "{s:?}");
    if is_plain_valid(s) {
        assert_eq!(idna::domain_to_ascii(s).ok().as_deref(), Some(s), "{s:?}");
        assert_eq!(slow.as_deref(), Ok(s), "{s:?}");
    }
}

/// A label from the pieces that matter: plain ones, punycode (valid, bad, bare `xn--`, in upper
/// case, not at the start), hyphens at the edges, upper case, IDN, wildcards, IPs, other ASCII.
fn label() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9-]{0,70}",
        "[a-zA-Z0-9_ -]{0,8}",
        "(xn|XN|Xn|xN)--[a-z0-9-]{0,12}",
        "[a-z]{0,3}xn--[a-z]{0,3}",
        Just("xn--bcher-kva".to_string()),
        Just("xn--".to_string()),
        Just("xn--a".to_string()),
        Just("xn--zz-zzz".to_string()),
        "[a-zäöüßé\u{200d}\u{0661}]{1,6}",
        Just("*".to_string()),
        "[0-9]{1,3}",
        "[\\x21-\\x7e]{1,4}",
    ]
}

/// A name: labels joined by dots, sometimes with a trailing dot or an empty label.
fn name() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(label(), 0..6),
        prop_oneof![Just(""), Just("."), Just("..")],
    )
        .prop_map(|(labels, end)| labels.join(".") + end)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn the_fast_path_answers_as_idna_does(s in name()) {
        same_answer(&s);
    }

    #[test]
    fn the_fast_path_answers_as_idna_does_for_any_ascii(s in "[\\x00-\\x7f]{0,24}") {
        same_answer(&s);
    }
}

/// Every string of up to 6 characters over those where plain names and punycode meet.
#[test]
fn the_fast_path_answers_as_idna_does_for_every_short_name() {
    let alphabet = ['a', '0', '-', '.', 'x', 'n', 'N'];
    let mut current = vec![String::new()];
    let mut plain = 0;
    for _ in 0..6 {
        let mut next = Vec::with_capacity(current.len() * alphabet.len());
        for s in &current {
            for c in alphabet {
                let s = format!("{s}{c}");
                same_answer(&s);
                plain += usize::from(is_plain_valid(&s));
                next.push(s);
            }
        }
        current = next;
    }
    // `xn--a.a` and the like take the whole way; `axn--a.a0-n` is plain.
    assert!(!is_plain_valid("xn--a.a") && !is_plain_valid("a.xn--a") && !is_plain_valid("1.0"));
    assert!(is_plain_valid("axn--a.a0-n") && is_plain_valid("0.a"));
    assert!(plain > 1_000, "{plain}");
    // Long names and labels take the same path to the same errors.
    for s in [
        super::tests::longest_name('a'),
        format!("{}.test", "a".repeat(64)),
        format!("{}com", "abcdefghi.".repeat(26)),
    ] {
        same_answer(&s);
    }
}
