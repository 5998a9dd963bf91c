//! The responder's challenge map kept in step with the records: a record's published challenges
//! are answered from before the record says so until after it no longer needs them.

use haproxy_acme_state::{Challenge, ChallengeType, Record};

use crate::responder::Tokens;

/// Adds the challenges of `new` to the responders (HTTP-01 by token, TLS-ALPN-01 by name) and,
/// when `old` is given, removes those of `old` that `new` no longer has.
pub fn sync_tokens(tokens: &Tokens, old: Option<&Record>, new: Option<&Record>) {
    let chs = |r: Option<&Record>| -> Vec<Challenge> {
        r.and_then(|r| r.order())
            .map(|o| {
                o.challenges
                    .iter()
                    .filter(|c| matches!(c.kind, ChallengeType::Http01 | ChallengeType::TlsAlpn01))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    };
    fn alpn(c: &Challenge) -> Option<&String> {
        c.domain
            .as_ref()
            .filter(|_| c.kind == ChallengeType::TlsAlpn01)
    }
    let new_chs = chs(new);
    for c in &new_chs {
        match alpn(c) {
            Some(name) => tokens.insert_alpn(name.clone(), c.key_authorization.clone()),
            None => tokens.insert(c.token.clone(), c.key_authorization.clone()),
        }
    }
    for c in chs(old) {
        if !new_chs.iter().any(|n| n.token == c.token) {
            match alpn(&c) {
                Some(name) => tokens.remove_alpn(name, &c.key_authorization),
                None => tokens.remove(&c.token),
            }
        }
    }
}
