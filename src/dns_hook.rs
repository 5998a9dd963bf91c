//! DNS-01 through exec hooks (`DNS_HOOK`, `DNS_CLEANUP_HOOK`) with certbot's manual-hook
//! interface, so the scripts users have for their DNS provider work unchanged: each hook runs
//! once per TXT record with `sh -c` (the runner of [`crate::hook`]: timeout, process-group kill,
//! bounded output), with `CERTBOT_DOMAIN`, `CERTBOT_VALIDATION`, `CERTBOT_TOKEN`,
//! `CERTBOT_REMAINING_CHALLENGES`, `CERTBOT_ALL_DOMAINS`, and for cleanup `CERTBOT_AUTH_OUTPUT`.

use std::ffi::OsString;
use std::time::Duration;

use base64::Engine;
use haproxy_acme_state::Challenge;
use sha2::{Digest, Sha256};

use crate::hook::Outcome;

/// The TXT value for a key authorization: base64url(SHA-256(key authorization)), unpadded
/// (RFC 8555 §8.4).
pub fn validation(key_authorization: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(Sha256::digest(key_authorization.as_bytes()))
}

/// The name the TXT record goes to: `_acme-challenge.<domain>` (the domain without `*.`).
pub fn record_name(c: &Challenge) -> String {
    format!("_acme-challenge.{}", domain(c))
}

fn domain(c: &Challenge) -> &str {
    c.domain.as_deref().unwrap_or_default()
}

/// Which hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// `DNS_HOOK`: publish.
    Auth,
    /// `DNS_CLEANUP_HOOK`: remove; gets `CERTBOT_AUTH_OUTPUT`.
    Cleanup,
}

/// certbot's variables for the hook run for `all[i]` (`all`: every DNS challenge of the run,
/// in the order the hook runs for them). `auth_output`: what the auth hook printed (cleanup
/// only; empty when it is not known, after a restart).
pub fn vars(
    stage: Stage,
    all: &[Challenge],
    i: usize,
    auth_output: &str,
) -> Vec<(&'static str, OsString)> {
    let c = &all[i];
    let all_domains: Vec<&str> = all.iter().map(domain).collect();
    let mut vars = vec![
        ("CERTBOT_DOMAIN", domain(c).into()),
        (
            "CERTBOT_VALIDATION",
            validation(&c.key_authorization).into(),
        ),
        ("CERTBOT_TOKEN", c.token.clone().into()),
        (
            "CERTBOT_REMAINING_CHALLENGES",
            (all.len() - i - 1).to_string().into(),
        ),
        ("CERTBOT_ALL_DOMAINS", all_domains.join(",").into()),
    ];
    if stage == Stage::Cleanup {
        vars.push(("CERTBOT_AUTH_OUTPUT", auth_output.into()));
    }
    vars
}

/// Runs `command` for `all[i]`, logging its output line by line under `cert`.
pub async fn run(
    stage: Stage,
    command: &str,
    cert: &str,
    all: &[Challenge],
    i: usize,
    auth_output: &str,
    timeout: Duration,
) -> Outcome {
    let what = match stage {
        Stage::Auth => "DNS_HOOK",
        Stage::Cleanup => "DNS_CLEANUP_HOOK",
    };
    let name = record_name(&all[i]);
    let out = crate::hook::run_with(command, &vars(stage, all, i, auth_output), timeout).await;
    for (stream, text) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            tracing::info!(cert, stream, record = %name, "{what}: {line}");
        }
    }
    let ms = out.took.as_millis() as u64;
    match &out.error {
        None => tracing::info!(cert, record = %name, ms, "{what} succeeded"),
        Some(e) => tracing::warn!(cert, record = %name, ms, error = %e, "{what} failed"),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use haproxy_acme_state::ChallengeType;

    fn dns(domain: &str, token: &str) -> Challenge {
        Challenge {
            token: token.into(),
            key_authorization: format!("{token}.thumbprint"),
            kind: ChallengeType::Dns01,
            domain: Some(domain.into()),
        }
    }

    #[test]
    fn the_validation_is_rfc_8555s_digest() {
        // RFC 8555 §8.4: base64url(SHA-256(key authorization)), no padding. The value of a
        // known input, computed independently (`printf %s 'tok.thumb' | openssl dgst
        // -sha256 -binary | basenc --base64url | tr -d =`).
        assert_eq!(
            validation("tok.thumb"),
            "sYAwVrqDtVOuJZvAHurSAYPoEt5fFV_C4bdSOOW-o5Y"
        );
        assert_eq!(validation("x").len(), 43);
        assert!(!validation("x").contains('='));
    }

    #[tokio::test]
    async fn hooks_get_certbots_variables() {
        let all = [
            dns("a.test", "t1"),
            dns("a.test", "t2"),
            dns("b.a.test", "t3"),
        ];
        let print = "printf '%s|%s|%s|%s|%s|%s' \"$CERTBOT_DOMAIN\" \"$CERTBOT_VALIDATION\" \
                     \"$CERTBOT_TOKEN\" \"$CERTBOT_REMAINING_CHALLENGES\" \"$CERTBOT_ALL_DOMAINS\" \
                     \"${CERTBOT_AUTH_OUTPUT-unset}\"";
        let t = Duration::from_secs(10);
        let out = run(Stage::Auth, print, "a.test", &all, 0, "", t).await;
        assert!(out.error.is_none(), "{:?}", out.error);
        assert_eq!(
            out.stdout,
            format!(
                "a.test|{}|t1|2|a.test,a.test,b.a.test|unset",
                validation("t1.thumbprint")
            )
        );
        let out = run(Stage::Cleanup, print, "a.test", &all, 2, "id=42", t).await;
        assert_eq!(
            out.stdout,
            format!(
                "b.a.test|{}|t3|0|a.test,a.test,b.a.test|id=42",
                validation("t3.thumbprint")
            )
        );
        assert_eq!(record_name(&all[2]), "_acme-challenge.b.a.test");
        let failed = run(
            Stage::Auth,
            "echo no API token >&2; exit 3",
            "a.test",
            &all,
            1,
            "",
            t,
        )
        .await;
        assert_eq!(
            failed.error.as_deref(),
            Some("exit status 3; last output: no API token")
        );
    }
}
