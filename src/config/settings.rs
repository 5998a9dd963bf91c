//! The validated settings: raw settings (flags and environment) checked once at start-up into
//! one typed `Config` (with the wanted set, `WantedSet`, read from the same raw settings).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use haproxy_acme_state::ledger::Limits;
use haproxy_acme_state::KeyType;
use serde::Serialize;

use super::wanted::WantedSet;
use crate::cli::RawSettings;

pub const LETSENCRYPT_PRODUCTION: &str = "https://acme-v02.api.letsencrypt.org/directory";
pub const LETSENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";
pub(crate) const DEFAULT_DATA_DIR: &str = "/var/lib/haproxy-acme";
const DEFAULT_CERTS_DIR: &str = "/etc/haproxy/certs";
const DEFAULT_RESPONDER_LISTEN: &str = "0.0.0.0:80";

/// Where HAProxy's runtime API listens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "address", rename_all = "lowercase")]
pub enum RuntimeApiAddr {
    Unix(PathBuf),
    Tcp(String),
}

impl fmt::Display for RuntimeApiAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuntimeApiAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            RuntimeApiAddr::Tcp(a) => f.write_str(a),
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// DOMAINS_FILE, watched for changes (`WantedSet` reads it).
    pub domains_file: Option<PathBuf>,
    pub prune: bool,
    pub email: Option<String>,
    /// EAB_KID + EAB_HMAC_KEY (or EAB_HMAC_KEY_FILE): sent with the new-account request only.
    pub eab: Option<super::eab::Eab>,
    /// A fleet sharing a PostgreSQL store (`POSTGRES_URL` ...); `None`: sled in DATA_DIR.
    pub fleet: Option<super::fleet::Fleet>,
    pub acme_directory: String,
    pub acme_ca_bundle: Option<PathBuf>,
    pub key_type: KeyType,
    pub data_dir: PathBuf,
    pub certs_dir: PathBuf,
    /// `certs_dir` as HAProxy names it (file names in runtime API commands must match its own).
    pub haproxy_certs_dir: PathBuf,
    /// `None`: files-only mode.
    pub haproxy_runtime_api: Option<RuntimeApiAddr>,
    pub load_balancer_service_name: Option<String>,
    pub responder_listen: SocketAddr,
    /// `TLS_ALPN_LISTEN`: the TLS-ALPN-01 responder (`None`: off).
    pub tls_alpn_listen: Option<SocketAddr>,
    /// The local rate-limit budget (`None`: off).
    pub rate_limits: Option<Limits>,
    /// `CONCURRENCY`: how many certificates the reconciler works on at once.
    pub concurrency: usize,
    /// The read-only admin endpoint on TCP (`ADMIN_LISTEN`), if any.
    pub admin_listen: Option<SocketAddr>,
    /// `DEPLOY_HOOK`: run with `sh -c` after each new certificate is installed.
    pub deploy_hook: Option<String>,
    #[serde(serialize_with = "values::serialize_secs")]
    pub deploy_hook_timeout: Duration,
    /// `DNS_HOOK`: run with `sh -c` to publish each DNS-01 TXT record (certbot's auth hook).
    pub dns_hook: Option<String>,
    /// `DNS_CLEANUP_HOOK`: run with `sh -c` to remove each one (certbot's cleanup hook).
    pub dns_cleanup_hook: Option<String>,
    #[serde(serialize_with = "values::serialize_secs")]
    pub dns_hook_timeout: Duration,
    /// `DNS_UPDATE_SERVER` and its TSIG key: DNS-01 by RFC 2136 (wins over `dns_hook`).
    pub dns_update: Option<super::dns_update::DnsUpdate>,
    /// `DNS_RESOLVER`, `DNS_AUTHORITATIVE_PORT`, `DNS_PERSIST_ISSUER`: how dns-persist-01
    /// records are checked before the CA is told.
    pub dns_persist: super::dns_persist::PersistCheck,
    /// `WATCHDOG_INTERVAL`: how often HAProxy is asked which certificate it serves (`None`:
    /// never).
    #[serde(serialize_with = "values::serialize_opt_secs")]
    pub watchdog_interval: Option<Duration>,
    /// `METRICS_PER_CERTIFICATE`: which certificates `/metrics` writes per-certificate series of.
    pub metrics_per_certificate: crate::metrics::PerCertificate,
    /// `ALERT_HOOK`: run with `sh -c` when a certificate starts or stops needing attention.
    pub alert_hook: Option<String>,
    /// `ACME_PROFILE`: what orders ask for unless a certificate says (`None`: the CA's default).
    pub acme_profile: Option<String>,
    /// `PREFLIGHT`: challenges are checked the CA's way before it is told (`crate::preflight`).
    pub preflight: bool,
    /// `PREFLIGHT_HTTP_ADDRESS`: where HTTP-01's preflight connects (`None`: the name's address).
    pub preflight_http_address: Option<String>,
    /// `PREFLIGHT_TLS_ADDRESS`: where TLS-ALPN-01's preflight connects (`None`: the name's).
    pub preflight_tls_address: Option<String>,
}

/// Everything wrong with the settings, one human-readable line each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub Vec<String>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration:")?;
        for p in &self.0 {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Which settings a command needs: `run` and `check-config` need certificates to manage, while
/// `state dump` needs only the data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Daemon,
    StoreOnly,
}

impl Config {
    /// Validates `raw`, collecting every problem rather than stopping at the first. With
    /// `Need::Daemon` the wanted set is read (DOMAINS and DOMAINS_FILE must be valid); otherwise
    /// only DOMAINS is parsed, and a problem with it is reported when the set is read.
    pub fn from_raw(raw: &RawSettings, need: Need) -> Result<(Config, WantedSet), ConfigError> {
        let mut errors = Vec::new();

        let domains_file = raw
            .domains_file
            .clone()
            .filter(|p| !p.as_os_str().is_empty());
        let hook_setting = |v: &Option<String>| {
            v.as_deref()
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .map(String::from)
        };
        let dns_hook = hook_setting(&raw.dns_hook);
        let dns_update = super::dns_update::from_raw(raw).unwrap_or_else(|mut e| {
            errors.append(&mut e);
            None
        });
        let dns_persist = super::dns_persist::from_raw(raw).unwrap_or_else(|mut e| {
            errors.append(&mut e);
            super::dns_persist::PersistCheck {
                resolver: None,
                authoritative_port: 53,
                issuer: None,
                propagation_timeout: Duration::from_secs(60),
            }
        });
        let mut wanted = WantedSet::new(
            raw.domains.as_deref().unwrap_or_default(),
            domains_file.clone(),
            [
                dns_hook.is_some()
                    || raw
                        .dns_update_server
                        .as_deref()
                        .is_some_and(|s| !s.trim().is_empty()),
                raw.tls_alpn_listen
                    .as_deref()
                    .is_some_and(|s| !s.trim().is_empty()),
            ],
        );
        if need == Need::Daemon {
            if let Err(mut e) = wanted.read_initial() {
                errors.append(&mut e);
            }
        }

        let email = match raw
            .email
            .as_deref()
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            None => None,
            Some(e) => match validate_email(e) {
                Ok(e) => Some(e),
                Err(why) => {
                    errors.push(format!("EMAIL {e:?}: {why}"));
                    None
                }
            },
        };

        let fleet = super::fleet::from_raw(raw, &mut errors);
        let eab = super::eab::from_raw(raw).unwrap_or_else(|mut e| {
            errors.append(&mut e);
            None
        });

        let acme_directory = match (raw.acme_directory.as_deref().map(str::trim), raw.staging) {
            (Some(d), true) if !d.is_empty() && d != LETSENCRYPT_STAGING => {
                errors.push(format!(
                    "--staging selects Let's Encrypt staging but ACME_DIRECTORY is {d:?}: keep one of them"
                ));
                d.to_string()
            }
            (Some(d), _) if !d.is_empty() => {
                if let Err(why) = checks::directory_url(d) {
                    errors.push(format!("ACME_DIRECTORY {d:?}: {why}"));
                }
                d.to_string()
            }
            (_, true) => LETSENCRYPT_STAGING.to_string(),
            (_, false) => LETSENCRYPT_PRODUCTION.to_string(),
        };

        let key_type = match raw.key_type.as_deref().map(str::trim) {
            None | Some("") => KeyType::EcdsaP256,
            Some(k) => KeyType::parse(&k.to_ascii_lowercase()).unwrap_or_else(|| {
                errors.push(format!(
                    "KEY_TYPE {k:?}: expected one of ecdsa-p256, ecdsa-p384, rsa2048, rsa4096"
                ));
                KeyType::EcdsaP256
            }),
        };

        let acme_ca_bundle = raw
            .acme_ca_bundle
            .clone()
            .filter(|p| !p.as_os_str().is_empty());
        if let Some(p) = &acme_ca_bundle {
            if need == Need::Daemon {
                if let Err(why) = checks::ca_bundle(p) {
                    errors.push(format!("ACME_CA_BUNDLE {}: {why}", p.display()));
                }
            }
        }

        let nonempty = |p: &Option<PathBuf>| p.clone().filter(|p| !p.as_os_str().is_empty());
        let data_dir = raw.data_dir_or_default();
        let certs_dir = nonempty(&raw.certs_dir).unwrap_or_else(|| DEFAULT_CERTS_DIR.into());
        let haproxy_certs_dir =
            nonempty(&raw.haproxy_certs_dir).unwrap_or_else(|| certs_dir.clone());
        if let Err(why) = checks::unix_socket_path(&crate::admin::socket_path(&data_dir)) {
            errors.push(format!(
                "DATA_DIR {}: too long for the admin socket in it: {why}",
                data_dir.display()
            ));
        }

        let load_balancer_service_name = raw
            .load_balancer_service_name
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from);
        if let Some(Err(why)) = load_balancer_service_name.as_deref().map(checks::host) {
            errors.push(format!("LOAD_BALANCER_SERVICE_NAME: {why}"));
        }
        let haproxy_runtime_api = match raw.haproxy_runtime_api.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(s) => match parse_runtime_api(s, load_balancer_service_name.as_deref()) {
                Ok(a) => Some(a),
                Err(why) => {
                    errors.push(format!("HAPROXY_RUNTIME_API {s:?}: {why}"));
                    None
                }
            },
        };
        // Runtime-API commands name files in this directory.
        if raw
            .haproxy_runtime_api
            .as_deref()
            .is_some_and(|s| !s.trim().is_empty())
        {
            let setting = match nonempty(&raw.haproxy_certs_dir) {
                Some(_) => "HAPROXY_CERTS_DIR",
                None => "CERTS_DIR",
            };
            match haproxy_certs_dir.to_str() {
                None => errors.push(format!(
                    "{setting} {haproxy_certs_dir:?}: not UTF-8, which HAProxy's runtime API \
                     cannot name"
                )),
                Some(d) => {
                    if let Some(c) = checks::runtime_api_unsafe(d) {
                        errors.push(format!(
                            "{setting} {d:?}: contains {c:?}, which HAProxy's runtime API cannot \
                             take in a file name (spaces, ';', '\\' and control characters \
                             split or end its commands)"
                        ));
                    }
                }
            }
        }

        let listen = raw.responder_listen.as_deref().map(str::trim).unwrap_or("");
        let listen = if listen.is_empty() {
            DEFAULT_RESPONDER_LISTEN
        } else {
            listen
        };
        let responder_listen = listen.parse::<SocketAddr>().unwrap_or_else(|_| {
            errors.push(format!(
                "RESPONDER_LISTEN {listen:?}: expected an address and port such as 0.0.0.0:80 or [::]:80"
            ));
            SocketAddr::from(([0, 0, 0, 0], 80))
        });

        let tls_alpn_listen = match raw.tls_alpn_listen.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(a) => a
                .parse::<SocketAddr>()
                .map_err(|_| {
                    errors.push(format!(
                "TLS_ALPN_LISTEN {a:?}: expected an address and port such as 127.0.0.1:8403"
            ))
                })
                .ok(),
        };

        let rate_limits = parse_rate_limits(raw.rate_limits.as_deref(), &acme_directory)
            .unwrap_or_else(|e| {
                errors.push(format!("RATE_LIMITS: {e}"));
                None
            });

        let concurrency = parse_concurrency(raw.concurrency.as_deref()).unwrap_or_else(|e| {
            errors.push(e);
            DEFAULT_CONCURRENCY
        });
        let admin_listen = match raw.admin_listen.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(a) => match a.parse::<SocketAddr>() {
                Err(_) => {
                    errors.push(format!(
                        "ADMIN_LISTEN {a:?}: expected an address and port such as 127.0.0.1:9120"
                    ));
                    None
                }
                Ok(addr) if !addr.ip().is_loopback() && !raw.admin_listen_non_loopback => {
                    errors.push(format!(
                        "ADMIN_LISTEN {a:?} is not a loopback address: the admin endpoint has no \
                         authentication or TLS. Use 127.0.0.1 or [::1], or set \
                         ADMIN_LISTEN_NON_LOOPBACK=true if the network is private"
                    ));
                    None
                }
                Ok(addr) => Some(addr),
            },
        };

        let deploy_hook = raw
            .deploy_hook
            .as_deref()
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(String::from);
        let deploy_hook_timeout = timeout_setting(
            "DEPLOY_HOOK_TIMEOUT",
            raw.deploy_hook_timeout.as_deref(),
            DEFAULT_DEPLOY_HOOK_TIMEOUT,
            &mut errors,
        );

        let dns_cleanup_hook = hook_setting(&raw.dns_cleanup_hook);
        let dns_hook_timeout = timeout_setting(
            "DNS_HOOK_TIMEOUT",
            raw.dns_hook_timeout.as_deref(),
            DEFAULT_DNS_HOOK_TIMEOUT,
            &mut errors,
        );
        if dns_cleanup_hook.is_some() && dns_hook.is_none() {
            errors.push(
                "DNS_CLEANUP_HOOK is set without DNS_HOOK: set DNS_HOOK to the command that \
                 publishes the TXT records (the cleanup hook only removes them)"
                    .into(),
            );
        }

        let watchdog_interval = parse_watchdog_interval(raw.watchdog_interval.as_deref())
            .unwrap_or_else(|e| {
                errors.push(e);
                None
            });
        let metrics_per_certificate = parse_metrics_per_certificate(
            raw.metrics_per_certificate.as_deref(),
        )
        .unwrap_or_else(|e| {
            errors.push(e);
            Default::default()
        });
        let alert_hook = raw
            .alert_hook
            .as_deref()
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(String::from);

        let initial = (need == Need::Daemon).then(|| wanted.initial());
        let acme_profile =
            super::profiles::from_settings(raw.acme_profile.as_deref(), &acme_directory, initial)
                .unwrap_or_else(|mut e| {
                    errors.append(&mut e);
                    None
                });

        let (preflight, preflight_http_address, preflight_tls_address) = parse_preflight(
            raw.preflight.as_deref(),
            raw.preflight_http_address.as_deref(),
            raw.preflight_tls_address.as_deref(),
        )
        .unwrap_or_else(|mut e| {
            errors.append(&mut e);
            (true, None, None)
        });

        if !errors.is_empty() {
            return Err(ConfigError(errors));
        }
        let config = Config {
            preflight,
            preflight_http_address,
            preflight_tls_address,
            acme_profile,
            watchdog_interval,
            metrics_per_certificate,
            alert_hook,
            admin_listen,
            deploy_hook,
            deploy_hook_timeout,
            dns_hook,
            dns_cleanup_hook,
            dns_hook_timeout,
            dns_update,
            dns_persist,
            rate_limits,
            concurrency,
            domains_file,
            prune: raw.prune,
            email,
            eab,
            fleet,
            acme_directory,
            acme_ca_bundle,
            key_type,
            data_dir,
            certs_dir,
            haproxy_certs_dir,
            haproxy_runtime_api,
            load_balancer_service_name,
            responder_listen,
            tls_alpn_listen,
        };
        Ok((config, wanted))
    }
}

const DEFAULT_DEPLOY_HOOK_TIMEOUT: Duration = Duration::from_secs(60);
/// DNS hooks often wait for propagation: 5 minutes.
const DEFAULT_DNS_HOOK_TIMEOUT: Duration = Duration::from_secs(300);

/// The accepted duration syntax, for error messages.
const DURATION_SYNTAX: &str =
    "a number with a unit, such as 90s, 5m, 3h, 7d or 1h 30m (a bare number is seconds)";

/// Parses a duration: humantime's syntax (`90s`, `5m`, `3h`, `7d`, `1h 30m`, ...) or a bare
/// number of seconds (`90`: DEPLOY_HOOK_TIMEOUT always took it). One syntax for every duration
/// setting (DEPLOY_HOOK_TIMEOUT, the windows of RATE_LIMITS).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| format!("{s:?} is too large a number of seconds"));
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration ({e}): expected {DURATION_SYNTAX}"))
}

mod checks;
mod values;
#[cfg(test)]
use haproxy_acme_state::ledger::Limit;
pub use values::DEFAULT_CONCURRENCY;
#[cfg(test)]
use values::MAX_RATE_WINDOW_SECS;
use values::{
    parse_concurrency, parse_metrics_per_certificate, parse_preflight, parse_rate_limits,
    parse_runtime_api, parse_watchdog_interval, timeout_setting, validate_email,
};

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;
