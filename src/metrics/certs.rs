//! The certificates' gauges, written straight from their summaries in id order: the aggregates
//! (certificates by phase, by condition needing attention, the earliest expiry) and the
//! per-certificate families (expiry, renewal, ready, failures, next attempt, attention), the same
//! OpenMetrics text as prometheus-client's families (unit tests compare them), without a map of
//! label sets per scrape: a scrape of 100,000 certificates costs a pass over their summaries (and
//! six more when every one gets its series).
//!
//! Which certificates get per-certificate series is `METRICS_PER_CERTIFICATE` ([`PerCertificate`]):
//! every one, or only those that need an operator. Prometheus' cost is its number of series, 5
//! per healthy certificate (expiry, renewal, ready ×2, failures): 500,000 at 100,000 certificates
//! (and 39 MiB of text per scrape). `auto` writes every certificate's up to [`AUTO_ALL_UP_TO`].

use std::fmt::Write;

use haproxy_acme_state::attention::Condition;
use haproxy_acme_state::dump::{Summary, Tally};
use haproxy_acme_state::{Phase, UnixTime};

/// `METRICS_PER_CERTIFICATE`: which certificates get per-certificate series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PerCertificate {
    /// `all` up to [`AUTO_ALL_UP_TO`] certificates, `attention` above.
    #[default]
    Auto,
    /// Every certificate.
    All,
    /// Only certificates with a condition (`failing`, `expiring`, `not-served`) or a failed
    /// attempt: an expiring certificate keeps its expiry gauge, so expiry alerts still fire.
    Attention,
}

/// `auto` writes every certificate's series up to this many certificates.
pub const AUTO_ALL_UP_TO: usize = 10_000;

impl PerCertificate {
    /// The setting's value: `auto`, `all` or `attention`.
    pub fn parse(s: &str) -> Option<PerCertificate> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Some(PerCertificate::Auto),
            "all" => Some(PerCertificate::All),
            "attention" => Some(PerCertificate::Attention),
            _ => None,
        }
    }

    /// Whether every one of `count` certificates gets its series.
    fn every_one(self, count: usize) -> bool {
        match self {
            PerCertificate::Auto => count <= AUTO_ALL_UP_TO,
            PerCertificate::All => true,
            PerCertificate::Attention => false,
        }
    }
}

/// Whether a certificate's current step failed at least once: in attention mode it gets its
/// series (a retryable failure is a condition only from its third attempt), as does one with a
/// condition.
fn failed(s: &Summary) -> bool {
    s.failure().is_some_and(|f| f.attempts > 0)
}

/// The aggregate families: name, help.
const AGGREGATES: [(&str, &str); 3] = [
    (
        "certificates",
        "Certificates by phase (pending, validating, issued, expiring); above 10,000 \
         certificates METRICS_PER_CERTIFICATE=auto writes per-certificate series only for those \
         that need attention",
    ),
    (
        "certificates_attention",
        "Certificates with each condition that needs an operator (what `status --check` reports)",
    ),
    (
        "certificate_expiration_earliest_timestamp_seconds",
        "The earliest expiry of a configured certificate (Unix seconds; absent when none is \
         issued)",
    ),
];

/// The families, in the order they are written: name, help.
const FAMILIES: [(&str, &str); 6] = [
    (
        "certificate_expiration_timestamp_seconds",
        "The date after which the certificate expires (Unix seconds; with \
         METRICS_PER_CERTIFICATE=attention, or auto above 10,000 certificates, only of \
         certificates that need attention)",
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
        .chain(AGGREGATES.iter())
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

/// Appends `value` in decimal to `out` (no formatting machinery: called per line).
fn push_int(out: &mut String, value: i64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut n = value.unsigned_abs();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if value < 0 {
        out.push('-');
    }
    out.push_str(std::str::from_utf8(&buf[i..]).expect("ASCII digits"));
}

/// The rest of an attention line after the id: its condition label, closed.
fn condition_label(c: Condition) -> &'static str {
    match c {
        Condition::Failing => "\",condition=\"failing\"} ",
        Condition::Expiring => "\",condition=\"expiring\"} ",
        Condition::NotServed => "\",condition=\"not-served\"} ",
    }
}

/// Appends the aggregate families of `tally`.
fn write_aggregates(out: &mut String, tally: &Tally) {
    let prefix = super::PREFIX;
    let [(phases, phases_help), (conditions, conditions_help), (earliest, earliest_help)] =
        AGGREGATES;
    descriptor(out, phases, phases_help);
    for p in Phase::ALL {
        let n = tally.phases[p as usize];
        let _ = writeln!(out, "{prefix}_{phases}{{phase=\"{}\"}} {n}", p.as_str());
    }
    descriptor(out, conditions, conditions_help);
    for c in Condition::ALL {
        let n = tally.conditions[c as usize];
        let _ = writeln!(
            out,
            "{prefix}_{conditions}{{condition=\"{}\"}} {n}",
            c.as_str()
        );
    }
    if let Some(t) = tally.earliest_expiry {
        descriptor(out, earliest, earliest_help);
        let _ = writeln!(out, "{prefix}_{earliest} {t}");
    }
}

/// Appends the certificates' families of `certs` (in id order) at `now` to `out`: the
/// aggregates, then the per-certificate families of the certificates `per` selects.
pub(super) fn write<'a>(
    out: &mut String,
    certs: impl Iterator<Item = (&'a str, &'a Summary)> + Clone,
    now: UnixTime,
    per: PerCertificate,
) {
    let mut tally = Tally::default();
    // Those needing attention, noted in the same pass: the six families then go over these
    // only, not six times over every certificate.
    let mut chosen = Vec::new();
    for (id, s) in certs.clone() {
        if tally.add(s, now) || failed(s) {
            chosen.push((id, s));
        }
    }
    write_aggregates(out, &tally);
    if per.every_one(tally.total) {
        // About 5 lines of 80 bytes per certificate.
        out.reserve(tally.total * 400);
        write_per_certificate(out, certs, now);
    } else {
        out.reserve(chosen.len() * 400);
        write_per_certificate(out, chosen.into_iter(), now);
    }
}

/// Appends the per-certificate families of `certs` (in id order) at `now` to `out`.
pub(super) fn write_per_certificate<'a>(
    out: &mut String,
    certs: impl Iterator<Item = (&'a str, &'a Summary)> + Clone,
    now: UnixTime,
) {
    for (n, (name, help)) in FAMILIES.iter().enumerate() {
        // A family without a sample is left out, as prometheus-client does.
        let start = out.len();
        descriptor(out, name, help);
        let bare = out.len();
        // Everything of a line before the id.
        let head = format!("{}_{name}{{name=\"", super::PREFIX);
        for (id, s) in certs.clone() {
            let id = escaped(id);
            let mut line = |rest: &str, value: i64| {
                out.push_str(&head);
                out.push_str(&id);
                out.push_str(rest);
                push_int(out, value);
                out.push('\n');
            };
            match n {
                0 => s.not_after().into_iter().for_each(|t| line("\"} ", t)),
                1 => {
                    if let Some(t) = s.renew_at().filter(|_| !s.unconfigured) {
                        line("\"} ", t)
                    }
                }
                2 => {
                    let served = s.served(now);
                    line("\",condition=\"True\"} ", i64::from(served));
                    line("\",condition=\"False\"} ", i64::from(!served));
                }
                3 => line("\"} ", s.failure().map_or(0, |f| i64::from(f.attempts))),
                4 => {
                    if let Some(t) = s.failure().and_then(|f| f.next_attempt_at) {
                        line("\"} ", t)
                    }
                }
                _ => {
                    for c in s.conditions_at(now) {
                        line(condition_label(c), 1)
                    }
                }
            }
        }
        if out.len() == bare {
            out.truncate(start);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_written_as_display_writes_them() {
        for v in [0, 7, -7, 10, 1_700_000_000, -86_400, i64::MAX, i64::MIN] {
            let mut out = String::from("x ");
            push_int(&mut out, v);
            assert_eq!(out, format!("x {v}"));
        }
    }

    #[test]
    fn the_setting_reads_its_three_values() {
        assert_eq!(PerCertificate::parse(""), Some(PerCertificate::Auto));
        assert_eq!(PerCertificate::parse(" Auto"), Some(PerCertificate::Auto));
        assert_eq!(PerCertificate::parse("all"), Some(PerCertificate::All));
        assert_eq!(
            PerCertificate::parse("attention"),
            Some(PerCertificate::Attention)
        );
        assert_eq!(PerCertificate::parse("some"), None);
        assert!(PerCertificate::Auto.every_one(AUTO_ALL_UP_TO));
        assert!(!PerCertificate::Auto.every_one(AUTO_ALL_UP_TO + 1));
        assert!(PerCertificate::All.every_one(1_000_000));
        assert!(!PerCertificate::Attention.every_one(1));
    }
}
