//! A certificate entry's options: `key=value` tokens after its names (`a.com,www.a.com
//! profile=shortlived`), in DOMAINS, DOMAINS_FILE and `domains add` alike. `=` is in no DNS
//! name, so entries without options keep their meaning.

use std::borrow::Cow;

use haproxy_acme_state::ChallengeType;

use super::names::CertSpec;

/// Splits one certificate entry into its names and its option tokens. A token holding `=` is an
/// option (`=` is in no DNS name, so entries without one keep their meaning); options stand
/// apart from the names by whitespace or a comma (`a.com,www.a.com profile=shortlived`, and
/// `domains add` keeps them comma-joined). Whitespace inside a name is left there, so a name
/// with a space is still refused as one.
pub(super) fn split_entry(entry: &str) -> (Vec<Cow<'_, str>>, Vec<&str>) {
    let mut names = Vec::new();
    let mut options = Vec::new();
    for piece in split_ascii(entry, b',') {
        // Most pieces are one name: printable ASCII with neither space nor '='.
        if piece.bytes().all(|b| b.is_ascii_graphic() && b != b'=') {
            if !piece.is_empty() {
                names.push(Cow::Borrowed(piece));
            }
            continue;
        }
        // The piece's words other than options, joined by one space (a name unless there is
        // more than one word); borrowed from the entry when there is one.
        let mut name: Option<Cow<'_, str>> = None;
        for word in piece.split_whitespace() {
            if word.contains('=') {
                options.push(word);
            } else if let Some(name) = &mut name {
                let name = name.to_mut();
                name.push(' ');
                name.push_str(word);
            } else {
                name = Some(Cow::Borrowed(word));
            }
        }
        names.extend(name);
    }
    (names, options)
}

/// `s.split(sep)` for an ASCII `sep`, by a plain loop over the bytes: on the short pieces of a
/// certificate entry, faster than `str::split`'s search (`memchr`).
pub(super) fn split_ascii(s: &str, sep: u8) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let r = rest?;
        match r.bytes().position(|b| b == sep) {
            Some(i) => {
                rest = Some(&r[i + 1..]);
                Some(&r[..i])
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

/// The options of one certificate entry.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct EntryOptions {
    /// `profile=NAME`: the ACME profile its orders ask for (overrides ACME_PROFILE).
    pub profile: Option<String>,
    /// `challenge=http-01|dns-01|dns-persist-01|tls-alpn-01`: how the CA validates its names
    /// (`None`: HTTP-01).
    pub challenge: Option<ChallengeType>,
}

/// The option keys a certificate entry takes, for error messages.
const OPTION_KEYS: &str = "profile=NAME and challenge=http-01|dns-01|dns-persist-01|tls-alpn-01";

/// Parses `key=value` option tokens; every problem is reported (an unknown key, an empty or
/// bad value, a key given twice).
pub(super) fn parse_options(tokens: &[&str]) -> Result<EntryOptions, Vec<String>> {
    let mut errors = Vec::new();
    let mut options = EntryOptions::default();
    for token in tokens {
        let (key, value) = token.split_once('=').expect("an option holds '='");
        match key {
            "profile" => {
                if let Err(why) = super::names::check_profile_name(value) {
                    errors.push(format!("option {token:?}: the profile {why}"));
                } else if options.profile.is_some() {
                    errors.push(format!("option {token:?}: profile is given twice"));
                } else {
                    options.profile = Some(value.to_string());
                }
            }
            "challenge" => match ChallengeType::parse(value) {
                None => errors.push(format!(
                    "option {token:?}: unknown challenge type {value:?} (this version answers \
                     http-01, dns-01, dns-persist-01 and tls-alpn-01)"
                )),
                Some(_) if options.challenge.is_some() => {
                    errors.push(format!("option {token:?}: challenge is given twice"))
                }
                Some(c) => options.challenge = Some(c),
            },
            _ => errors.push(format!(
                "unknown option {key:?} (in {token:?}): a certificate entry takes {OPTION_KEYS}"
            )),
        }
    }
    if errors.is_empty() {
        Ok(options)
    } else {
        Err(errors)
    }
}

/// The error for a certificate with `challenge=dns-01` while DNS_HOOK is not set.
pub(super) fn dns_hook_missing(spec: &CertSpec) -> Option<String> {
    spec.challenge().is_dns().then(|| {
        format!(
            "certificate {:?} has challenge={} but neither DNS_UPDATE_SERVER nor DNS_HOOK is \
             set: set DNS_UPDATE_SERVER (and its TSIG key) to publish the TXT records by RFC \
             2136 dynamic update, or DNS_HOOK to the command that publishes one (certbot's \
             manual auth hook; README: \"Wildcards and DNS-01\"), or remove the option to \
             validate over HTTP-01",
            spec.id(),
            spec.challenge().as_str()
        )
    })
}

/// The error for a certificate with `challenge=tls-alpn-01` while TLS_ALPN_LISTEN is not set.
pub(super) fn tls_alpn_missing(spec: &CertSpec) -> Option<String> {
    (spec.challenge() == ChallengeType::TlsAlpn01).then(|| {
        format!(
            "certificate {:?} has challenge=tls-alpn-01 but TLS_ALPN_LISTEN is not set: set it \
             to the address HAProxy sends `acme-tls/1` handshakes to (deploy/haproxy.cfg's \
             ACME_TLS_ALPN_RESPONDER, 127.0.0.1:8403 by default), or remove the option",
            spec.id()
        )
    })
}

#[cfg(test)]
mod tests {
    use crate::config::{parse_domains, parse_domains_file, CertSpec};
    use haproxy_acme_state::ChallengeType;

    fn names(specs: &[CertSpec]) -> Vec<Vec<&str>> {
        specs
            .iter()
            .map(|s| s.names().iter().map(String::as_str).collect())
            .collect()
    }

    #[test]
    fn options_follow_the_names_and_unknown_ones_are_refused() {
        let specs = parse_domains(
            "a.com,www.a.com profile=shortlived; b.com ;c.com profile=classic,www.c.com",
        )
        .unwrap();
        assert_eq!(
            names(&specs),
            vec![
                vec!["a.com", "www.a.com"],
                vec!["b.com"],
                vec!["c.com", "www.c.com"]
            ]
        );
        let profiles: Vec<Option<&str>> = specs.iter().map(|s| s.profile()).collect();
        assert_eq!(profiles, [Some("shortlived"), None, Some("classic")]);
        assert_eq!(specs[1].profile_or(Some("tlsserver")), Some("tlsserver"));
        assert_eq!(specs[0].profile_or(Some("tlsserver")), Some("shortlived"));
        // What `domains add` keeps reads back the same (names and options comma-joined).
        let tokens = specs[0].entry_tokens();
        assert_eq!(tokens, ["a.com", "www.a.com", "profile=shortlived"]);
        assert_eq!(parse_domains(&tokens.join(",")).unwrap()[0], specs[0]);
        // A file line takes options too.
        let f = parse_domains_file("d.com profile=shortlived # short\n").unwrap();
        assert_eq!(f[0].profile(), Some("shortlived"));
        // Entries without `=` keep their meaning: a space inside a name is still an error.
        let e = parse_domains("a.com b.com").unwrap_err();
        assert!(e[0].contains("\"a.com b.com\" contains ' '"), "{e:?}");
        // challenge=: a wildcard with its apex over DNS-01, kept by `domains add` as a token.
        let w =
            parse_domains("example.test,*.Example.test challenge=dns-01;b.test challenge=http-01")
                .unwrap();
        assert_eq!(
            names(&w),
            vec![vec!["example.test", "*.example.test"], vec!["b.test"]]
        );
        assert_eq!(w[0].id().as_str(), "example.test");
        assert_eq!(w[0].challenge(), ChallengeType::Dns01);
        assert_eq!(w[1].challenge(), ChallengeType::Http01);
        assert_eq!(
            specs[0].challenge(),
            ChallengeType::Http01,
            "no option: HTTP-01"
        );
        let tokens = w[0].entry_tokens();
        assert_eq!(
            tokens,
            ["example.test", "*.example.test", "challenge=dns-01"]
        );
        assert_eq!(parse_domains(&tokens.join(",")).unwrap()[0], w[0]);
        // dns-persist-01 takes wildcards too, and is kept as a token.
        let p = parse_domains("p.test,*.p.test challenge=dns-persist-01").unwrap();
        assert_eq!(p[0].challenge(), ChallengeType::DnsPersist01);
        assert_eq!(
            p[0].entry_tokens(),
            ["p.test", "*.p.test", "challenge=dns-persist-01"]
        );
        // tls-alpn-01 is kept as a token too.
        let t = parse_domains("t.test,www.t.test challenge=tls-alpn-01").unwrap();
        assert_eq!(t[0].challenge(), ChallengeType::TlsAlpn01);
        let tokens = t[0].entry_tokens();
        assert_eq!(tokens, ["t.test", "www.t.test", "challenge=tls-alpn-01"]);
        assert_eq!(parse_domains(&tokens.join(",")).unwrap()[0], t[0]);
        // http-01 is the default: an entry that names it reads back the same without it.
        assert_eq!(w[1].entry_tokens(), ["b.test"]);
        let table: &[(&str, &str)] = &[
            ("a.com color=blue", "unknown option \"color\" (in \"color=blue\"): a certificate entry takes profile=NAME and challenge=http-01|dns-01|dns-persist-01|tls-alpn-01"),
            ("a.com challenge=tls-alpn-02", "option \"challenge=tls-alpn-02\": unknown challenge type \"tls-alpn-02\""),
            ("a.com,*.a.com challenge=tls-alpn-01", "\"*.a.com\" is a wildcard: TLS-ALPN-01 cannot validate wildcards; add challenge=dns-01"),
            ("a.com challenge=dns-01 challenge=http-01", "challenge is given twice"),
            ("a.com,*.a.com challenge=http-01", "\"*.a.com\" is a wildcard: HTTP-01 cannot validate wildcards; add challenge=dns-01 to its certificate"),
            ("a.com,*.a.com", "\"*.a.com\" is a wildcard: HTTP-01 cannot validate wildcards"),
            ("*.a.com,a.com challenge=dns-01", "\"*.a.com\" is a wildcard and cannot be the certificate's first name"),
            ("a.com,*.*.a.com challenge=dns-01", "a wildcard is '*.' followed by a host name"),
            ("a.com,a*.a.com challenge=dns-01", "a wildcard is '*.' followed by a host name"),
            ("a.com,*.com challenge=dns-01", "\"*.com\" is a single label"),
            ("a.com profile=", "option \"profile=\": the profile is empty"),
            ("a.com profile=a/b", "option \"profile=a/b\": the profile contains '/'"),
            ("a.com profile=x profile=y", "profile is given twice"),
            ("profile=shortlived", "no names: a certificate needs at least one"),
            ("=x", "unknown option \"\""),
        ];
        for (input, want) in table {
            let e = parse_domains(input).expect_err(input);
            assert!(
                e.iter()
                    .any(|e| e.contains(want) && e.starts_with("DOMAINS entry")),
                "{input:?}: {e:?}"
            );
        }
    }

    /// `split_entry` as it was before its fast path for one-word pieces (a `Vec` of words per
    /// piece, joined by one space).
    fn split_entry_by_words(entry: &str) -> (Vec<String>, Vec<&str>) {
        let mut names = Vec::new();
        let mut options = Vec::new();
        for piece in entry.split(',') {
            let mut rest: Vec<&str> = Vec::new();
            for word in piece.split_whitespace() {
                if word.contains('=') {
                    options.push(word);
                } else {
                    rest.push(word);
                }
            }
            if !rest.is_empty() {
                names.push(rest.join(" "));
            }
        }
        (names, options)
    }

    proptest::proptest! {
        #[test]
        fn split_entry_splits_as_by_words(
            entry in "[a-c.,=; \\t\u{3000}\u{a0}\u{0}\u{7f}\u{e9}*-]{0,24}"
        ) {
            let (names, options) = super::split_entry(&entry);
            let names: Vec<String> = names.into_iter().map(String::from).collect();
            proptest::prop_assert_eq!((names, options), split_entry_by_words(&entry));
        }
    }
}
