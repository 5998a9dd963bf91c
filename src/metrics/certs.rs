//! The per-certificate gauges (expiry, renewal, ready, failures, next attempt, attention), written
//! straight from the certificates' summaries in id order: the same OpenMetrics text as
//! prometheus-client's families (a unit test compares them), without a map of label sets per
//! scrape, so a scrape of 100,000 certificates costs a pass over their summaries.

use std::fmt::Write;

use haproxy_acme_state::dump::Summary;
use haproxy_acme_state::UnixTime;

/// The families, in the order they are written: name, help.
const FAMILIES: [(&str, &str); 6] = [
    (
        "certificate_expiration_timestamp_seconds",
        "The date after which the certificate expires (Unix seconds)",
    ),
    (
        "certificate_renewal_timestamp_seconds",
        "The date after which the certificate is renewed (Unix seconds)",
    ),
    (
        "certificate_ready_status",
        "The certificate is served by HAProxy (the stored one, unexpired): condition True is 1",
    ),
    (
        "certificate_failures",
        "Consecutive failed attempts of the certificate's current step (0: none)",
    ),
    (
        "certificate_next_attempt_timestamp_seconds",
        "When a failed certificate is tried again (backoff or the CA's Retry-After)",
    ),
    (
        "certificate_attention",
        "1 for each condition that needs an operator (failing, expiring, not-served): what \
         `status --check` reports; absent when none",
    ),
];

/// The help text of family `name`.
#[cfg(test)]
pub(super) fn help(name: &str) -> &'static str {
    FAMILIES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, h)| *h)
        .expect("a family of ours")
}

/// The `# HELP` and `# TYPE` lines of family `name`, as prometheus-client writes them.
fn descriptor(out: &mut String, name: &str, help: &str) {
    let prefix = super::PREFIX;
    let _ = write!(
        out,
        "# HELP {prefix}_{name} {help}.\n# TYPE {prefix}_{name} gauge\n"
    );
}

/// A label value, escaped as prometheus-client does.
fn escaped(v: &str) -> std::borrow::Cow<'_, str> {
    if !v.contains(['\\', '"', '\n']) {
        return v.into();
    }
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
        .into()
}

/// Appends the per-certificate families of `certs` (in id order) at `now` to `out`.
pub(super) fn write<'a>(
    out: &mut String,
    certs: impl Iterator<Item = (&'a str, &'a Summary)> + Clone,
    now: UnixTime,
) {
    let prefix = super::PREFIX;
    for (n, (name, help)) in FAMILIES.iter().enumerate() {
        // A family without a sample is left out, as prometheus-client does.
        let start = out.len();
        descriptor(out, name, help);
        let bare = out.len();
        for (id, s) in certs.clone() {
            let id = escaped(id);
            let mut line = |labels: &str, value: i64| {
                let _ = writeln!(out, "{prefix}_{name}{{name=\"{id}\"{labels}}} {value}");
            };
            match n {
                0 => s.not_after.into_iter().for_each(|t| line("", t)),
                1 => {
                    if let Some(t) = s.renew_at.filter(|_| !s.unconfigured) {
                        line("", t)
                    }
                }
                2 => {
                    let served = s.served(now);
                    line(",condition=\"True\"", i64::from(served));
                    line(",condition=\"False\"", i64::from(!served));
                }
                3 => line("", s.failure.as_ref().map_or(0, |f| i64::from(f.attempts))),
                4 => {
                    if let Some(t) = s.failure.as_ref().and_then(|f| f.next_attempt_at) {
                        line("", t)
                    }
                }
                _ => {
                    for c in s.conditions(now) {
                        line(&format!(",condition=\"{}\"", c.as_str()), 1)
                    }
                }
            }
        }
        if out.len() == bare {
            out.truncate(start);
        }
    }
}
