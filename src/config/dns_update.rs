//! DNS-01 by RFC 2136 settings: `DNS_UPDATE_SERVER` with `DNS_TSIG_KEY_NAME`,
//! `DNS_TSIG_ALGORITHM`, `DNS_TSIG_SECRET` or `DNS_TSIG_SECRET_FILE`, `DNS_PROPAGATION_TIMEOUT`
//! and `DNS_AUTHORITATIVE_PORT`, checked into a [`DnsUpdate`] whose secret never prints (the
//! handling of EAB_HMAC_KEY, [`super::eab`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use super::eab::{HmacKey, SecretString};

/// The TSIG algorithms offered (RFC 8945's recommended ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum TsigAlg {
    #[serde(rename = "hmac-sha256")]
    HmacSha256,
    #[serde(rename = "hmac-sha512")]
    HmacSha512,
}

/// Where and how DNS-01 TXT records are published by dynamic update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DnsUpdate {
    /// `DNS_UPDATE_SERVER`: host:port of the primary that takes updates (port 53 if not given).
    pub server: String,
    /// `DNS_TSIG_KEY_NAME`.
    pub key_name: String,
    /// `DNS_TSIG_ALGORITHM`.
    pub algorithm: TsigAlg,
    /// `DNS_TSIG_SECRET` or the content of `DNS_TSIG_SECRET_FILE`, decoded; prints "(set)".
    pub secret: HmacKey,
    /// `DNS_TSIG_SECRET_FILE`, when the secret came from a file.
    pub secret_file: Option<PathBuf>,
    /// `DNS_PROPAGATION_TIMEOUT`: how long every authoritative server has to answer the value.
    #[serde(serialize_with = "secs")]
    pub propagation_timeout: Duration,
    /// `DNS_AUTHORITATIVE_PORT`: the port the zone's NS servers are asked on.
    pub authoritative_port: u16,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

const DEFAULT_PROPAGATION_TIMEOUT: Duration = Duration::from_secs(60);

/// The raw settings, as given.
#[derive(Default)]
pub struct Raw<'a> {
    pub server: Option<&'a str>,
    pub key_name: Option<&'a str>,
    pub algorithm: Option<&'a str>,
    pub secret: Option<&'a SecretString>,
    pub secret_file: Option<&'a Path>,
    pub propagation_timeout: Option<&'a str>,
    pub authoritative_port: Option<&'a str>,
}

/// `from_settings` of the raw settings.
pub fn from_raw(raw: &crate::cli::RawSettings) -> Result<Option<DnsUpdate>, Vec<String>> {
    from_settings(Raw {
        server: raw.dns_update_server.as_deref(),
        key_name: raw.dns_tsig_key_name.as_deref(),
        algorithm: raw.dns_tsig_algorithm.as_deref(),
        secret: raw.dns_tsig_secret.as_ref(),
        secret_file: raw.dns_tsig_secret_file.as_deref(),
        propagation_timeout: raw.dns_propagation_timeout.as_deref(),
        authoritative_port: raw.dns_authoritative_port.as_deref(),
    })
}

fn set(v: Option<&str>) -> Option<&str> {
    v.map(str::trim).filter(|v| !v.is_empty())
}

/// Checks the settings: none, or a server with a key name and a secret (given once). Problems
/// are one line each and never quote the secret.
pub fn from_settings(raw: Raw<'_>) -> Result<Option<DnsUpdate>, Vec<String>> {
    let server = set(raw.server);
    let key_name = set(raw.key_name);
    let secret = set(raw.secret.map(SecretString::expose));
    let secret_file = raw.secret_file.filter(|p| !p.as_os_str().is_empty());
    let Some(server) = server else {
        let given: Vec<&str> = [
            (key_name.is_some(), "DNS_TSIG_KEY_NAME"),
            (secret.is_some(), "DNS_TSIG_SECRET"),
            (secret_file.is_some(), "DNS_TSIG_SECRET_FILE"),
            (set(raw.algorithm).is_some(), "DNS_TSIG_ALGORITHM"),
        ]
        .into_iter()
        .filter_map(|(s, n)| s.then_some(n))
        .collect();
        return if given.is_empty() {
            Ok(None)
        } else {
            Err(vec![format!(
                "{} set without DNS_UPDATE_SERVER: set DNS_UPDATE_SERVER to the host:port of \
                 the DNS server that takes the updates (RFC 2136), or unset them",
                given.join(", ")
            )])
        };
    };
    let mut errors = Vec::new();
    let server = match check_server(server) {
        Ok(s) => s,
        Err(why) => {
            errors.push(format!("DNS_UPDATE_SERVER {server:?}: {why}"));
            String::new()
        }
    };
    let key_name = match key_name {
        None => {
            errors.push(
                "DNS_UPDATE_SERVER is set but DNS_TSIG_KEY_NAME is not: set it to the name of \
                 the TSIG key the server accepts updates with"
                    .into(),
            );
            String::new()
        }
        Some(k) => match hickory_name_ok(k) {
            Ok(()) => k.trim_end_matches('.').to_string(),
            Err(why) => {
                errors.push(format!("DNS_TSIG_KEY_NAME {k:?}: {why}"));
                String::new()
            }
        },
    };
    let algorithm = match set(raw.algorithm).map(str::to_ascii_lowercase).as_deref() {
        None | Some("hmac-sha256") => TsigAlg::HmacSha256,
        Some("hmac-sha512") => TsigAlg::HmacSha512,
        Some(a) => {
            errors.push(format!(
                "DNS_TSIG_ALGORITHM {a:?}: not supported (hmac-sha256, the default, or \
                 hmac-sha512)"
            ));
            TsigAlg::HmacSha256
        }
    };
    const BAD: &str = "not a base64 TSIG secret (expected the `secret` of the server's key, as \
                       tsig-keygen prints it)";
    let (secret, secret_file) = match (secret, secret_file) {
        (Some(_), Some(_)) => {
            errors.push(
                "DNS_TSIG_SECRET and DNS_TSIG_SECRET_FILE are both set: keep one of them".into(),
            );
            (None, None)
        }
        (Some(s), None) => match super::eab::decode(s) {
            Ok(k) => (Some(k), None),
            Err(_) => {
                errors.push(format!("DNS_TSIG_SECRET: {BAD}"));
                (None, None)
            }
        },
        (None, Some(path)) => match std::fs::read_to_string(path) {
            Err(e) => {
                errors.push(format!(
                    "DNS_TSIG_SECRET_FILE {}: cannot be read: {e}",
                    path.display()
                ));
                (None, None)
            }
            Ok(text) if text.trim().is_empty() => {
                errors.push(format!(
                    "DNS_TSIG_SECRET_FILE {}: the file is empty (expected the base64 secret of \
                     the TSIG key)",
                    path.display()
                ));
                (None, None)
            }
            Ok(text) => match super::eab::decode(text.trim()) {
                Ok(k) => (Some(k), Some(path.to_path_buf())),
                Err(_) => {
                    errors.push(format!("DNS_TSIG_SECRET_FILE {}: {BAD}", path.display()));
                    (None, None)
                }
            },
        },
        (None, None) => {
            errors.push(
                "DNS_UPDATE_SERVER is set but no TSIG secret: set DNS_TSIG_SECRET or \
                 DNS_TSIG_SECRET_FILE"
                    .into(),
            );
            (None, None)
        }
    };
    let propagation_timeout = match set(raw.propagation_timeout) {
        None => DEFAULT_PROPAGATION_TIMEOUT,
        Some(t) => match super::parse_duration(t) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                errors.push(format!(
                    "DNS_PROPAGATION_TIMEOUT {t:?}: must be more than zero"
                ));
                DEFAULT_PROPAGATION_TIMEOUT
            }
            Err(e) => {
                errors.push(format!("DNS_PROPAGATION_TIMEOUT: {e}"));
                DEFAULT_PROPAGATION_TIMEOUT
            }
        },
    };
    let authoritative_port = match set(raw.authoritative_port) {
        None => 53,
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => {
                errors.push(format!(
                    "DNS_AUTHORITATIVE_PORT {p:?}: not a port number (1-65535; 53 unless your \
                     name servers listen elsewhere)"
                ));
                53
            }
        },
    };
    match secret {
        Some(secret) if errors.is_empty() => Ok(Some(DnsUpdate {
            server,
            key_name,
            algorithm,
            secret: HmacKey::new(secret),
            secret_file,
            propagation_timeout,
            authoritative_port,
        })),
        _ => Err(errors),
    }
}

/// `host:port` (`[v6]:port`), or a host alone for port 53.
fn check_server(s: &str) -> Result<String, &'static str> {
    if s.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(s.to_string());
    }
    if s.parse::<std::net::IpAddr>().is_ok() {
        return Ok(if s.contains(':') {
            format!("[{s}]:53")
        } else {
            format!("{s}:53")
        });
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    };
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_')
    {
        return Err("expected host:port, e.g. ns1.example.com:53 or 192.0.2.1:53");
    }
    match port {
        None => Ok(format!("{host}:53")),
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p > 0 => Ok(format!("{host}:{p}")),
            _ => Err("the port is not a number from 1 to 65535"),
        },
    }
}

fn hickory_name_ok(k: &str) -> Result<(), &'static str> {
    if k.split('.').filter(|l| !l.is_empty()).count() == 0
        || k.len() > 253
        || !k
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_')
    {
        return Err("not a DNS name (the key's name as the server's `key` statement gives it)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A secret as tsig-keygen prints it (standard base64, padded).
    const SECRET: &str = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTAxMjM0NTY3ODk=";

    fn secret() -> SecretString {
        SECRET.parse().unwrap()
    }

    #[test]
    fn a_server_a_key_and_a_secret_make_the_settings() {
        let s = secret();
        let u = from_settings(Raw {
            server: Some("127.0.0.1:5353"),
            key_name: Some("acme-key."),
            secret: Some(&s),
            ..Default::default()
        })
        .unwrap()
        .unwrap();
        assert_eq!(u.server, "127.0.0.1:5353");
        assert_eq!(u.key_name, "acme-key");
        assert_eq!(u.algorithm, TsigAlg::HmacSha256);
        assert_eq!(u.secret.bytes(), b"secret-secret-secret-secret-0123456789");
        assert_eq!(u.propagation_timeout, Duration::from_secs(60));
        assert_eq!(u.authoritative_port, 53);
        assert_eq!(from_settings(Raw::default()), Ok(None));
        let u = from_settings(Raw {
            server: Some("ns1.example.com"),
            key_name: Some("k"),
            algorithm: Some("HMAC-SHA512"),
            secret: Some(&s),
            propagation_timeout: Some("2m"),
            authoritative_port: Some("5300"),
            ..Default::default()
        })
        .unwrap()
        .unwrap();
        assert_eq!(u.server, "ns1.example.com:53");
        assert_eq!(u.algorithm, TsigAlg::HmacSha512);
        assert_eq!(u.propagation_timeout, Duration::from_secs(120));
        assert_eq!(u.authoritative_port, 5300);
    }

    #[test]
    fn every_problem_is_named_and_the_secret_never_printed() {
        let s = secret();
        let e = from_settings(Raw {
            key_name: Some("k"),
            secret: Some(&s),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with("DNS_TSIG_KEY_NAME, DNS_TSIG_SECRET set without DNS_UPDATE_SERVER"),
            "{e:?}"
        );
        let e = from_settings(Raw {
            server: Some("bad host:x"),
            algorithm: Some("hmac-md5"),
            propagation_timeout: Some("0s"),
            authoritative_port: Some("70000"),
            ..Default::default()
        })
        .unwrap_err();
        let all = e.join("\n");
        for want in [
            "DNS_UPDATE_SERVER \"bad host:x\"",
            "DNS_TSIG_KEY_NAME is not",
            "DNS_TSIG_ALGORITHM \"hmac-md5\"",
            "no TSIG secret",
            "DNS_PROPAGATION_TIMEOUT",
            "DNS_AUTHORITATIVE_PORT",
        ] {
            assert!(all.contains(want), "{want}: {all}");
        }
        let bad: SecretString = "not base64 !!".parse().unwrap();
        let e = from_settings(Raw {
            server: Some("127.0.0.1:53"),
            key_name: Some("k"),
            secret: Some(&bad),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e[0].starts_with("DNS_TSIG_SECRET: not a base64"), "{e:?}");
        assert!(!e[0].contains("not base64 !!"));
        let u = from_settings(Raw {
            server: Some("127.0.0.1:53"),
            key_name: Some("k"),
            secret: Some(&s),
            ..Default::default()
        })
        .unwrap()
        .unwrap();
        let printed = format!("{u:?} {} {s:?}", serde_json::to_string(&u).unwrap());
        assert!(!printed.contains("c2VjcmV0"), "{printed}");
        assert!(!printed.contains("secret-secret"), "{printed}");
    }

    #[test]
    fn the_secret_comes_from_a_file_once() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tsig");
        std::fs::write(&file, format!("{SECRET}\n")).unwrap();
        let u = from_settings(Raw {
            server: Some("127.0.0.1:53"),
            key_name: Some("k"),
            secret_file: Some(&file),
            ..Default::default()
        })
        .unwrap()
        .unwrap();
        assert_eq!(u.secret.bytes(), b"secret-secret-secret-secret-0123456789");
        assert_eq!(u.secret_file.as_deref(), Some(file.as_path()));
        let s = secret();
        let e = from_settings(Raw {
            server: Some("127.0.0.1:53"),
            key_name: Some("k"),
            secret: Some(&s),
            secret_file: Some(&file),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e[0].contains("both set"), "{e:?}");
    }
}
