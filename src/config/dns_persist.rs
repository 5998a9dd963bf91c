//! dns-persist-01 settings: `DNS_RESOLVER` (where the zone of a `_validation-persist` record and
//! its NS servers are looked up), `DNS_AUTHORITATIVE_PORT` (shared with RFC 2136) and
//! `DNS_PERSIST_ISSUER` (the issuer-domain-name, when the CA's directory lists none), checked
//! into a [`PersistCheck`].

use serde::Serialize;

/// How the standing dns-persist-01 records are read before the CA is told to validate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PersistCheck {
    /// `DNS_RESOLVER`: host:port of a resolver asked (recursion desired) for the zone (SOA)
    /// and its NS servers. `None`: DNS_UPDATE_SERVER when set, else the first `nameserver` of
    /// /etc/resolv.conf, port 53.
    pub resolver: Option<String>,
    /// `DNS_AUTHORITATIVE_PORT`: the port the zone's NS servers are asked on.
    pub authoritative_port: u16,
    /// `DNS_PERSIST_ISSUER`: the issuer-domain-name the record names (`None`: the CA
    /// directory's first `meta.caaIdentities`).
    pub issuer: Option<String>,
    /// `DNS_PROPAGATION_TIMEOUT`: how long every authoritative server has to answer a TXT
    /// record DNS_HOOK published (the RFC 2136 path keeps its own copy in `DnsUpdate`).
    #[serde(serialize_with = "secs")]
    pub propagation_timeout: std::time::Duration,
}

fn secs<S: serde::Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

/// Checks the raw settings; every problem is reported.
pub fn from_raw(raw: &crate::cli::RawSettings) -> Result<PersistCheck, Vec<String>> {
    let set = |v: &Option<String>| {
        v.as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
    };
    let mut errors = Vec::new();
    let resolver = set(&raw.dns_resolver);
    if let Some(r) = &resolver {
        let (host, port) = match r.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(':') || h.starts_with('[') => (h, Some(p)),
            _ => (r.as_str(), None),
        };
        let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
        if host.is_empty() || host.contains(char::is_whitespace) || !port_ok {
            errors.push(format!(
                "DNS_RESOLVER {r:?}: not host:port (e.g. 127.0.0.1:53, or a host for port 53)"
            ));
        }
    }
    let authoritative_port = match set(&raw.dns_authoritative_port) {
        None => 53,
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p > 0 => p,
            // The RFC 2136 settings report it (with DNS_UPDATE_SERVER set); say it once.
            _ if raw.dns_update_server.is_some() => 53,
            _ => {
                errors.push(format!(
                    "DNS_AUTHORITATIVE_PORT {p:?}: not a port number (1-65535; 53 unless your \
                     name servers listen elsewhere)"
                ));
                53
            }
        },
    };
    let issuer = set(&raw.dns_persist_issuer).map(|i| i.to_ascii_lowercase());
    if let Some(i) = &issuer {
        if i.contains(';') || i.contains(char::is_whitespace) || !i.contains('.') {
            errors.push(format!(
                "DNS_PERSIST_ISSUER {i:?}: not a domain name (the CA's issuer-domain-name, e.g. \
                 letsencrypt.org)"
            ));
        }
    }
    let default_timeout = std::time::Duration::from_secs(60);
    let propagation_timeout = match set(&raw.dns_propagation_timeout) {
        None => default_timeout,
        Some(t) => match super::parse_duration(&t) {
            Ok(d) if !d.is_zero() => d,
            // The RFC 2136 settings report it (with DNS_UPDATE_SERVER set); say it once.
            _ if raw.dns_update_server.is_some() => default_timeout,
            _ => {
                errors.push(format!(
                    "DNS_PROPAGATION_TIMEOUT {t:?}: a duration more than zero (e.g. 60s, 5m)"
                ));
                default_timeout
            }
        },
    };
    if errors.is_empty() {
        Ok(PersistCheck {
            resolver,
            authoritative_port,
            issuer,
            propagation_timeout,
        })
    } else {
        Err(errors)
    }
}

/// `dns-persist-record --until`: a date (`2027-06-01`), a time (`2027-06-01T12:00:00Z`) or a
/// duration from `now` (`365d`), as Unix seconds.
pub fn parse_until(s: &str, now: i64) -> Result<i64, String> {
    let s = s.trim();
    let as_date = if s.len() == 10 {
        format!("{s}T00:00:00Z")
    } else {
        s.to_string()
    };
    if let Ok(t) = humantime::parse_rfc3339_weak(&as_date) {
        return t
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .map_err(|_| format!("{s:?} is before 1970"));
    }
    match super::parse_duration(s) {
        Ok(d) => Ok(now.saturating_add(d.as_secs() as i64)),
        Err(_) => Err(format!(
            "--until {s:?}: neither a date (2027-06-01, 2027-06-01T12:00:00Z) nor a duration \
             from now (365d)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn until_is_a_date_a_time_or_a_duration() {
        assert_eq!(parse_until("2027-06-01", 0), Ok(1_811_808_000));
        assert_eq!(parse_until("2027-06-01T00:00:10Z", 0), Ok(1_811_808_010));
        assert_eq!(parse_until("10d", 100), Ok(100 + 864_000));
        assert!(parse_until("soon", 0).unwrap_err().contains("--until"));
    }

    #[test]
    fn resolver_port_and_issuer_are_checked() {
        let mut raw = crate::cli::RawSettings::default();
        let c = from_raw(&raw).unwrap();
        assert_eq!(
            (c.resolver, c.authoritative_port, c.issuer),
            (None, 53, None)
        );
        raw.dns_resolver = Some("127.0.0.1:5353".into());
        raw.dns_authoritative_port = Some("5300".into());
        raw.dns_persist_issuer = Some("LetsEncrypt.org".into());
        let c = from_raw(&raw).unwrap();
        assert_eq!(c.resolver.as_deref(), Some("127.0.0.1:5353"));
        assert_eq!(c.authoritative_port, 5300);
        assert_eq!(c.issuer.as_deref(), Some("letsencrypt.org"));
        raw.dns_resolver = Some("a b:x".into());
        raw.dns_authoritative_port = Some("0".into());
        raw.dns_persist_issuer = Some("x;y".into());
        let e = from_raw(&raw).unwrap_err();
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(e[0].starts_with("DNS_RESOLVER") && e[1].starts_with("DNS_AUTHORITATIVE_PORT"));
        assert!(e[2].starts_with("DNS_PERSIST_ISSUER"));
    }
}
