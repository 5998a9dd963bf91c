//! What an instant-acme error means for us: classified into retryable / rate-limited /
//! permanent for the core, "order dead" (404, invalid), "account gone" (the CA forgot or
//! deactivated our account: `LazyAcme` registers again), and `badNonce` (retried at once by
//! [`nonce_retry!`], never a failed step).

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use haproxy_acme_state::{FailureKind, Step, UnixTime};

use super::http::{not_reached, retry_after_from_detail};
use super::AcmeError;

/// How many times one instant-acme call is made again, at once, after the CA answered
/// `badNonce` (RFC 8555 §6.5: the request was not processed, so repeating it is safe; the
/// error response carries the fresh nonce instant-acme then uses). instant-acme itself makes 3
/// attempts per call, so a call gives up after 3 × (9 + 1) = 30 rejected nonces in a row: at
/// a 50 % rejection rate (pebble's `PEBBLE_WFE_NONCEREJECT=50`) that is 2⁻³⁰ ≈ 9.3e-10 per
/// call, and an order's ≈20 signed calls fail with probability < 2e-8 (the goal was < 1e-6).
/// A CA that rejects every nonce still costs at most 30 requests per call before the step
/// fails and backs off.
pub(super) const BAD_NONCE_RETRIES: u32 = 9;

/// Awaits an instant-acme call (an expression evaluating to a future of
/// `Result<_, instant_acme::Error>`), evaluating it again while the CA answers `badNonce`, at
/// most [`BAD_NONCE_RETRIES`] more times. Each `badNonce` answer is counted by the HTTP client
/// (`haproxy_acme_acme_bad_nonces_total`).
macro_rules! nonce_retry {
    ($call:expr) => {{
        let mut retries = 0u32;
        loop {
            match $call.await {
                Err(e)
                    if $crate::acme::problem::is_bad_nonce(&e)
                        && retries < $crate::acme::problem::BAD_NONCE_RETRIES =>
                {
                    retries += 1;
                    tracing::debug!(retries, "badNonce: sending the request again at once");
                }
                result => break result,
            }
        }
    }};
}
pub(super) use nonce_retry;

/// The last segment of a problem type (`urn:ietf:params:acme:error:badNonce` → `badNonce`).
fn problem_kind(p: &instant_acme::Problem) -> &str {
    p.r#type
        .as_deref()
        .unwrap_or("")
        .rsplit(':')
        .next()
        .unwrap_or("")
}

/// The CA refused the request's nonce (and did nothing else).
pub(crate) fn is_bad_nonce(e: &instant_acme::Error) -> bool {
    matches!(e, instant_acme::Error::Api(p) if is_bad_nonce_problem(p))
}

pub(super) fn is_bad_nonce_problem(p: &instant_acme::Problem) -> bool {
    problem_kind(p) == "badNonce"
}

/// Whether a new-order request that carried `replaces` (RFC 9773) is worth sending once more
/// without it: `replaces` is optional (a renewal without it is still a renewal, only not
/// exempt from rate limits), and CAs refuse it in ways no RFC names: `alreadyReplaced`;
/// `malformed` for a certificate the CA does not know (pebble 2.10 after a restart: "parsing
/// ARI CertID failed: no known issuer matches the provided Authority Key Identifier";
/// boulder's "could not find certificate"); `serverInternal` when the serial's first byte is
/// 0x80 or more (pebble 2.10, letsencrypt/pebble#550: it looks up the RFC's DER serial, with
/// its 0x00 sign byte, among serials stored without it); `unauthorized` "does not identify a
/// certificate that belongs to this ACME account" (ZeroSSL). Not worth it: a rate limit (the
/// order without `replaces` is limited too, and more so), a nonce (retried as it is), an
/// account the CA no longer knows (registered again first). When the second request fails
/// too, that failure is the one reported.
pub(super) fn refuses_replaces(p: &instant_acme::Problem) -> bool {
    !matches!(problem_kind(p), "rateLimited" | "badNonce") && !is_account_gone(p)
}

/// The CA no longer knows the account that signed the request (`accountDoesNotExist`: it was
/// restored from a backup or restarted, as pebble forgets everything), or the account is
/// deactivated (`unauthorized` naming the deactivation: pebble's "Account has been
/// deactivated", boulder's "Account is not valid, has status \"deactivated\"").
pub(super) fn is_account_gone(p: &instant_acme::Problem) -> bool {
    match problem_kind(p) {
        "accountDoesNotExist" => true,
        "unauthorized" => is_deactivated(p),
        _ => false,
    }
}

/// An `unauthorized` problem about a deactivated account (also what a new-account request with
/// a deactivated account's key gets): that key can never sign for us again.
pub(super) fn is_deactivated(p: &instant_acme::Problem) -> bool {
    problem_kind(p) == "unauthorized"
        && p.detail
            .as_deref()
            .is_some_and(|d| d.to_ascii_lowercase().contains("deactivated"))
}

/// An `unauthorized` problem that is not about our account: the resource belongs to another
/// account (an order placed by the account we had before registering again).
pub(super) fn is_not_ours(e: &instant_acme::Error) -> bool {
    matches!(e, instant_acme::Error::Api(p)
        if problem_kind(p) == "unauthorized" && !is_deactivated(p))
}

impl AcmeError {
    pub(super) fn dead(step: Step, message: impl Into<String>) -> AcmeError {
        AcmeError {
            order_dead: true,
            ..AcmeError::new(step, FailureKind::Retryable, message)
        }
    }

    /// Classifies an instant-acme error: rate limits and permanent refusals by their RFC 8555
    /// problem type, a vanished order (404) as dead, a forgotten or deactivated account as
    /// gone, everything else as retryable.
    pub(crate) fn from_acme(step: Step, e: instant_acme::Error) -> AcmeError {
        match e {
            instant_acme::Error::Api(p) => {
                let kind_name = problem_kind(&p);
                let detail = format!(
                    "{}{}",
                    p.detail.as_deref().unwrap_or("(no detail)"),
                    p.r#type
                        .as_deref()
                        .map(|t| format!(" [{t}]"))
                        .unwrap_or_default()
                );
                let kind = match kind_name {
                    "rateLimited" => FailureKind::RateLimited,
                    "rejectedIdentifier"
                    | "unsupportedIdentifier"
                    | "caa"
                    | "badCSR"
                    | "badSignatureAlgorithm"
                    | "invalidContact"
                    | "unsupportedContact"
                    | "userActionRequired"
                    | "externalAccountRequired"
                    | "invalidProfile" => FailureKind::Permanent,
                    _ => FailureKind::Retryable,
                };
                let gone = is_account_gone(&p);
                let message = if gone {
                    format!("the CA no longer knows our account: {detail}")
                } else if kind_name == "invalidProfile" {
                    format!(
                        "CA refused the profile: {detail}; set ACME_PROFILE or the certificate's \
                         profile= to one the CA offers (or unset it for the CA's default)"
                    )
                } else if p.status == Some(404) {
                    format!("the CA does not know this order (HTTP 404): {detail}")
                } else {
                    format!("CA refused: {detail}")
                };
                let mut err = AcmeError::new(step, kind, message);
                err.order_dead = p.status == Some(404);
                err.account_gone = gone;
                err.retry_after = p.detail.as_deref().and_then(retry_after_from_detail);
                err
            }
            instant_acme::Error::Timeout(when) => {
                let mut err =
                    AcmeError::new(step, FailureKind::Retryable, "timed out waiting for the CA");
                err.retry_after = when.map(unix_at);
                err
            }
            other => AcmeError {
                unreachable: not_reached(&other),
                ..AcmeError::new(step, FailureKind::Retryable, with_sources(&other))
            },
        }
    }
}

/// An error with its chain of causes ("client error (Connect): tls handshake: UnknownIssuer"):
/// the outermost message alone rarely says what to fix.
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let msg = s.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        cur = s.source();
    }
    out
}

fn unix_at(i: Instant) -> UnixTime {
    let from_now = i.saturating_duration_since(Instant::now());
    let t = SystemTime::now() + from_now;
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(v: serde_json::Value) -> instant_acme::Error {
        instant_acme::Error::Api(serde_json::from_value(v).unwrap())
    }

    #[test]
    fn a_refused_replaces_is_told_from_other_problems() {
        let p = |t: &str, detail: &str| -> instant_acme::Problem {
            serde_json::from_value(serde_json::json!({"type": t, "status": 400, "detail": detail}))
                .unwrap()
        };
        for refused in [
            "alreadyReplaced",
            "malformed",
            "serverInternal",
            "unauthorized",
        ] {
            let t = format!("urn:ietf:params:acme:error:{refused}");
            assert!(refuses_replaces(&p(&t, "")), "{refused}");
        }
        for kept in ["rateLimited", "badNonce", "accountDoesNotExist"] {
            let t = format!("urn:ietf:params:acme:error:{kept}");
            assert!(!refuses_replaces(&p(&t, "")), "{kept}");
        }
        assert!(!refuses_replaces(&p(
            "urn:ietf:params:acme:error:unauthorized",
            "Account has been deactivated"
        )));
    }

    #[test]
    fn a_rate_limit_problem_is_classified_with_its_time() {
        let e = AcmeError::from_acme(
            Step::Order,
            problem(serde_json::json!({
                "type": "urn:ietf:params:acme:error:rateLimited",
                "detail": "too many new orders, retry after 2025-02-03 04:05:06 UTC",
                "status": 429
            })),
        );
        assert_eq!(e.kind, FailureKind::RateLimited);
        assert_eq!(e.retry_after, Some(1738555506));
        assert!(!e.order_dead && !e.account_gone);
    }

    #[test]
    fn bad_nonce_is_told_apart_from_other_refusals() {
        let bad = problem(serde_json::json!({
            "type": "urn:ietf:params:acme:error:badNonce",
            "detail": "JWS has an invalid anti-replay nonce: abc",
            "status": 400
        }));
        assert!(is_bad_nonce(&bad));
        let malformed = problem(serde_json::json!({
            "type": "urn:ietf:params:acme:error:malformed", "status": 400
        }));
        assert!(!is_bad_nonce(&malformed));
        assert!(!is_bad_nonce(&instant_acme::Error::Str("badNonce")));
    }

    #[tokio::test]
    async fn a_bad_nonce_is_sent_again_at_once_a_bounded_number_of_times() {
        let bad = || {
            problem(serde_json::json!({
                "type": "urn:ietf:params:acme:error:badNonce", "status": 400
            }))
        };
        let calls = std::cell::Cell::new(0u32);
        let r = nonce_retry!(async {
            calls.set(calls.get() + 1);
            if calls.get() <= 5 {
                Err(bad())
            } else {
                Ok::<u32, instant_acme::Error>(7)
            }
        });
        assert_eq!((r.unwrap(), calls.get()), (7, 6));
        calls.set(0);
        let r = nonce_retry!(async {
            calls.set(calls.get() + 1);
            Err::<u32, _>(bad())
        });
        assert!(is_bad_nonce(&r.unwrap_err()));
        assert_eq!(calls.get(), 1 + BAD_NONCE_RETRIES);
        // Any other refusal is not repeated.
        calls.set(0);
        let r = nonce_retry!(async {
            calls.set(calls.get() + 1);
            Err::<u32, _>(instant_acme::Error::Str("connection reset"))
        });
        assert!(r.is_err());
        assert_eq!(calls.get(), 1);
        // The bound's promise: instant-acme's 3 attempts per call, an order's ~20 signed
        // calls, 50 % rejection: a step fails with probability < 1e-6.
        let attempts = 3 * (BAD_NONCE_RETRIES as i32 + 1);
        assert!(20.0 * 0.5f64.powi(attempts) < 1e-6);
    }

    /// pebble's answers (wfe.go) after a restart and after a deactivation, and boulder's.
    #[test]
    fn a_forgotten_or_deactivated_account_is_gone() {
        let cases = [
            (
                "accountDoesNotExist",
                "Account https://127.0.0.1:14000/my-account/1 not found.",
                true,
                false,
            ),
            ("unauthorized", "Account has been deactivated", true, true),
            (
                "unauthorized",
                "An account with the provided public key exists but is deactivated",
                true,
                true,
            ),
            (
                "unauthorized",
                "Account is not valid, has status \"deactivated\"",
                true,
                true,
            ),
            (
                "unauthorized",
                "Account that authenticated the request does not own the specified order",
                false,
                false,
            ),
            ("malformed", "deactivated", false, false),
        ];
        for (kind, detail, gone, deactivated) in cases {
            let e = problem(serde_json::json!({
                "type": format!("urn:ietf:params:acme:error:{kind}"),
                "detail": detail,
                "status": 400
            }));
            let instant_acme::Error::Api(p) = &e else {
                unreachable!()
            };
            assert_eq!(is_account_gone(p), gone, "{kind}: {detail}");
            assert_eq!(is_deactivated(p), deactivated, "{kind}: {detail}");
            assert_eq!(is_not_ours(&e), kind == "unauthorized" && !deactivated);
            let err = AcmeError::from_acme(Step::Order, e);
            assert_eq!(err.account_gone, gone);
            assert!(!err.order_dead);
            if gone {
                assert!(err
                    .message
                    .starts_with("the CA no longer knows our account"));
            }
        }
    }

    #[test]
    fn an_invalid_profile_is_permanent_with_the_cas_message() {
        let e = AcmeError::from_acme(
            Step::Order,
            problem(serde_json::json!({
                "type": "urn:ietf:params:acme:error:invalidProfile",
                "detail": "profile \"nine-days\" is not supported",
                "status": 400
            })),
        );
        assert_eq!(e.kind, FailureKind::Permanent);
        assert!(!e.order_dead && !e.account_gone);
        assert!(
            e.message.starts_with(
                "CA refused the profile: profile \"nine-days\" is not supported \
                 [urn:ietf:params:acme:error:invalidProfile]"
            ) && e.message.contains("ACME_PROFILE"),
            "{}",
            e.message
        );
    }

    #[test]
    fn an_unknown_order_is_dead() {
        // pebble answers an unknown order URL with a bare 404; the HTTP client turns that
        // into this problem document (`http::problem_body`).
        let e = AcmeError::from_acme(
            Step::Order,
            problem(serde_json::json!({
                "type": "about:blank",
                "detail": "HTTP 404 Not Found, no problem document",
                "status": 404
            })),
        );
        assert!(e.order_dead && !e.account_gone);
        assert_eq!(e.kind, FailureKind::Retryable);
        assert!(
            e.message.contains("does not know this order"),
            "{}",
            e.message
        );
    }
}
