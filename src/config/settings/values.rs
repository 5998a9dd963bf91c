//! Parsing of single setting values whose syntax is ours: `RATE_LIMITS`, `CONCURRENCY`, `EMAIL`,
//! `HAPROXY_RUNTIME_API`, `PREFLIGHT` and `PREFLIGHT_HTTP_ADDRESS`, `WATCHDOG_INTERVAL`,
//! `METRICS_PER_CERTIFICATE` (split from `settings.rs`, which keeps the whole `Config`).

use haproxy_acme_state::ledger::{Limit, Limits};

use std::path::Path;
use std::time::Duration;

use super::{checks, parse_duration, RuntimeApiAddr};
use crate::config::profiles;

/// The longest rate-limit window: a year and a day (the budget's arithmetic adds windows to
/// times, and the ledger keeps what is in the window).
pub(super) const MAX_RATE_WINDOW_SECS: i64 = 366 * 86_400;

/// `RATE_LIMITS`: `auto`/unset, `off`, `lets-encrypt`, or `key=N/duration,...` with keys
/// `orders`, `exact-set`, `registered-domain`, `failed-validations` (a key left out is no limit)
/// and windows in `parse_duration`'s syntax (`90s`, `3h`, `7d`, `1h 30m`).
pub(super) fn parse_rate_limits(
    value: Option<&str>,
    directory: &str,
) -> Result<Option<Limits>, String> {
    let v = value.map(str::trim).unwrap_or("");
    let is_lets_encrypt = profiles::is_lets_encrypt(directory);
    match v {
        "" | "auto" => return Ok(is_lets_encrypt.then_some(Limits::LETS_ENCRYPT)),
        "off" | "none" => return Ok(None),
        "on" | "lets-encrypt" => return Ok(Some(Limits::LETS_ENCRYPT)),
        _ => {}
    }
    let mut limits = Limits {
        orders: None,
        exact_set: None,
        registered_domain: None,
        failed_validations: None,
    };
    for item in v.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (key, spec) = item
            .split_once('=')
            .ok_or_else(|| format!("{item:?}: expected key=N/duration"))?;
        let (count, window) = spec
            .split_once('/')
            .ok_or_else(|| format!("{item:?}: expected N/duration, e.g. 5/7d"))?;
        let count: u32 = count
            .trim()
            .parse()
            .map_err(|_| format!("{item:?}: {count:?} is not a count (1 to 4294967295)"))?;
        if count == 0 {
            return Err(format!(
                "{item:?}: a limit of 0 would never allow one (RATE_LIMITS=off sets no limit)"
            ));
        }
        let window = parse_duration(window).map_err(|e| format!("{item:?}: {e}"))?;
        let window_secs = i64::try_from(window.as_secs())
            .ok()
            .filter(|s| (1..=MAX_RATE_WINDOW_SECS).contains(s))
            .ok_or_else(|| format!("{item:?}: the window must be from 1s to 366d"))?;
        let limit = Some(Limit { count, window_secs });
        let slot = match key.trim() {
            "orders" => &mut limits.orders,
            "exact-set" => &mut limits.exact_set,
            "registered-domain" => &mut limits.registered_domain,
            "failed-validations" => &mut limits.failed_validations,
            other => {
                return Err(format!(
                    "unknown limit {other:?} (orders, exact-set, registered-domain, failed-validations)"
                ))
            }
        };
        if slot.is_some() {
            return Err(format!("{:?} is given twice", key.trim()));
        }
        *slot = limit;
    }
    Ok(Some(limits))
}

/// `CONCURRENCY` when unset: how many certificates the reconciler works on at once.
pub const DEFAULT_CONCURRENCY: usize = 8;
/// The most `CONCURRENCY` accepts.
pub(super) const MAX_CONCURRENCY: usize = 256;

/// `CONCURRENCY`: a whole number from 1 to 256 (unset or empty: 8); the error names the setting.
pub(super) fn parse_concurrency(value: Option<&str>) -> Result<usize, String> {
    match value.map(str::trim) {
        None | Some("") => Ok(DEFAULT_CONCURRENCY),
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_CONCURRENCY).contains(n))
            .ok_or_else(|| {
                format!(
                    "CONCURRENCY {v:?}: expected a whole number from 1 to {MAX_CONCURRENCY} \
                     (how many certificates are worked on at once; default {DEFAULT_CONCURRENCY})"
                )
            }),
    }
}

pub(super) fn validate_email(e: &str) -> Result<String, &'static str> {
    let e = e.strip_prefix("mailto:").unwrap_or(e);
    match e.split_once('@') {
        Some((local, domain))
            if !local.is_empty()
                && domain.contains('.')
                && !e
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == ',' || c == ';')
                && !domain.contains('@') =>
        {
            Ok(e.to_string())
        }
        _ => Err("not an e-mail address (expected name@example.com)"),
    }
}

pub(super) fn parse_runtime_api(s: &str, lb: Option<&str>) -> Result<RuntimeApiAddr, String> {
    if let Some(path) = s.strip_prefix("unix:") {
        if !path.starts_with('/') {
            return Err(
                "the unix socket path must be absolute (unix:/run/haproxy/admin.sock)".into(),
            );
        }
        checks::unix_socket_path(Path::new(path))?;
        return Ok(RuntimeApiAddr::Unix(path.into()));
    }
    let port_only = s.strip_prefix(':').unwrap_or(s);
    if port_only.parse::<u16>().is_ok() {
        checks::host_port(&format!("h:{port_only}"))?;
        return match lb {
            Some(host) => Ok(RuntimeApiAddr::Tcp(format!("{host}:{port_only}"))),
            None => Err("a bare port needs LOAD_BALANCER_SERVICE_NAME to name the host".into()),
        };
    }
    match s.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
            checks::host_port(s)?;
            Ok(RuntimeApiAddr::Tcp(s.to_string()))
        }
        _ => Err("expected unix:/path/to/socket, host:port, or a port".into()),
    }
}

/// `PREFLIGHT` (`on`, the default, or `off`), `PREFLIGHT_HTTP_ADDRESS` and
/// `PREFLIGHT_TLS_ADDRESS` (`host:port`, port 80 and 443 if not given): whether challenges are
/// checked before the CA is told, and where HTTP-01's and TLS-ALPN-01's are fetched (`None`:
/// each name's own address).
pub(super) fn parse_preflight(
    enabled: Option<&str>,
    http: Option<&str>,
    tls: Option<&str>,
) -> Result<(bool, Option<String>, Option<String>), Vec<String>> {
    let mut errors = Vec::new();
    let on = match enabled.map(str::trim).unwrap_or("") {
        "" | "on" | "true" | "1" => true,
        "off" | "false" | "0" => false,
        other => {
            errors.push(format!("PREFLIGHT {other:?}: `on` (the default) or `off`"));
            true
        }
    };
    let http = host_port("PREFLIGHT_HTTP_ADDRESS", http, 80, &mut errors);
    let tls = host_port("PREFLIGHT_TLS_ADDRESS", tls, 443, &mut errors);
    match errors.is_empty() {
        true => Ok((on, http, tls)),
        false => Err(errors),
    }
}

/// `host:port`, `[v6]:port`, or a host / `[v6]` given `default_port`; a problem is pushed to
/// `errors` naming `setting`.
fn host_port(
    setting: &str,
    value: Option<&str>,
    default_port: u16,
    errors: &mut Vec<String>,
) -> Option<String> {
    let a = value.map(str::trim).filter(|a| !a.is_empty())?;
    let port = if a.starts_with('[') {
        // `[v6]` or `[v6]:port`.
        a.split_once("]:").map(|(_, p)| p)
    } else {
        a.rsplit_once(':').map(|(_, p)| p)
    };
    Some(match port {
        None if !a.starts_with('[') || a.ends_with(']') => format!("{a}:{default_port}"),
        Some(p) if a.starts_with('[') || a.matches(':').count() == 1 => {
            if p.parse::<u16>().map_or(true, |p| p == 0) {
                errors.push(format!("{setting} {a:?}: the port must be 1-65535"));
            }
            a.to_string()
        }
        _ => {
            errors.push(format!(
                "{setting} {a:?}: host:port, an IPv6 address in brackets ([::1]:{default_port})"
            ));
            a.to_string()
        }
    })
}

const DEFAULT_WATCHDOG_INTERVAL: Duration = Duration::from_secs(300);

/// `WATCHDOG_INTERVAL`: a duration of at least 1 s, 5 minutes when unset, `off` (or `0`) for
/// never (`None`).
pub(super) fn parse_watchdog_interval(value: Option<&str>) -> Result<Option<Duration>, String> {
    match value.map(str::trim) {
        None | Some("") => Ok(Some(DEFAULT_WATCHDOG_INTERVAL)),
        Some("off" | "0") => Ok(None),
        Some(t) => match parse_duration(t) {
            Ok(d) if d >= Duration::from_secs(1) => Ok(Some(d)),
            Ok(_) => Err(format!(
                "WATCHDOG_INTERVAL {t:?}: at least 1s (or `off` to never check)"
            )),
            Err(e) => Err(format!("WATCHDOG_INTERVAL: {e}")),
        },
    }
}

/// `METRICS_PER_CERTIFICATE`: `auto` (the default), `all` or `attention`.
pub(super) fn parse_metrics_per_certificate(
    value: Option<&str>,
) -> Result<crate::metrics::PerCertificate, String> {
    let v = value.unwrap_or("");
    crate::metrics::PerCertificate::parse(v).ok_or_else(|| {
        format!(
            "METRICS_PER_CERTIFICATE {:?}: `auto` (the default: every certificate's series up to \
             {} certificates, above only those needing attention), `all` or `attention`",
            v.trim(),
            crate::metrics::AUTO_ALL_UP_TO
        )
    })
}

/// A timeout setting (`DEPLOY_HOOK_TIMEOUT`, `DNS_HOOK_TIMEOUT`): a duration more than zero,
/// `default` when unset; a problem is pushed to `errors` naming `setting`.
pub(super) fn timeout_setting(
    setting: &str,
    value: Option<&str>,
    default: std::time::Duration,
    errors: &mut Vec<String>,
) -> std::time::Duration {
    match value.map(str::trim) {
        None | Some("") => default,
        Some(t) => match parse_duration(t) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                errors.push(format!("{setting} {t:?}: must be more than zero"));
                default
            }
            Err(e) => {
                errors.push(format!("{setting}: {e}"));
                default
            }
        },
    }
}

pub(super) fn serialize_opt_secs<S: serde::Serializer>(
    d: &Option<Duration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&d.as_secs()),
        None => s.serialize_none(),
    }
}

pub(super) fn serialize_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::PerCertificate;

    #[test]
    fn metrics_per_certificate_is_auto_unless_set() {
        assert_eq!(
            parse_metrics_per_certificate(None),
            Ok(PerCertificate::Auto)
        );
        assert_eq!(
            parse_metrics_per_certificate(Some(" attention ")),
            Ok(PerCertificate::Attention)
        );
        assert_eq!(
            parse_metrics_per_certificate(Some("all")),
            Ok(PerCertificate::All)
        );
        let e = parse_metrics_per_certificate(Some("few")).unwrap_err();
        assert!(
            e.starts_with(
                "METRICS_PER_CERTIFICATE \"few\": `auto` (the default: every \
                 certificate's series up to 10000 certificates"
            ),
            "{e}"
        );
    }
}
