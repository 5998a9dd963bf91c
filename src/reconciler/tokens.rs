//! The responder's challenge map kept in step with the records: a record's published challenges
//! are answered from before the record says so until after it no longer needs them.

use haproxy_acme_state::{Challenge, Record};

use crate::responder::Tokens;

/// Adds the challenges of `new` to the responder and, when `old` is given, removes those of
/// `old` that `new` no longer has.
pub fn sync_tokens(tokens: &Tokens, old: Option<&Record>, new: Option<&Record>) {
    let chs = |r: Option<&Record>| -> Vec<Challenge> {
        r.and_then(|r| r.order())
            .map(|o| {
                o.challenges
                    .iter()
                    .filter(|c| c.kind.is_http01())
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    };
    let new_chs = chs(new);
    for c in &new_chs {
        tokens.insert(c.token.clone(), c.key_authorization.clone());
    }
    for c in chs(old) {
        if !new_chs.iter().any(|n| n.token == c.token) {
            tokens.remove(&c.token);
        }
    }
}
