//! Configuration: raw settings (flags and environment) validated once at start-up into one typed
//! `Config`; only the validated type travels past start-up.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use haproxy_acme_state::ledger::{Limit, Limits};
use haproxy_acme_state::KeyType;
use serde::Serialize;

use crate::cli::RawSettings;

pub const LETSENCRYPT_PRODUCTION: &str = "https://acme-v02.api.letsencrypt.org/directory";
pub const LETSENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";
const DEFAULT_DATA_DIR: &str = "/var/lib/haproxy-acme";
const DEFAULT_CERTS_DIR: &str = "/etc/haproxy/certs";
const DEFAULT_RESPONDER_LISTEN: &str = "0.0.0.0:80";

/// One wanted certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct CertSpec {
    /// The first name; also the file name `<id>.pem`.
    pub id: String,
    /// All names, the id first, normalized (lower case, punycode, no trailing dot).
    pub names: Vec<String>,
}

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
    /// The certificates wanted at start-up (DOMAINS, then DOMAINS_FILE); `read_certificates`
    /// reads them again.
    pub certificates: Vec<CertSpec>,
    /// DOMAINS as given, kept to combine with a changed DOMAINS_FILE.
    #[serde(skip)]
    pub domains: String,
    pub domains_file: Option<PathBuf>,
    pub prune: bool,
    pub email: Option<String>,
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
    /// The local rate-limit budget (`None`: off).
    pub rate_limits: Option<Limits>,
    /// The read-only admin endpoint on TCP (`ADMIN_LISTEN`), if any.
    pub admin_listen: Option<SocketAddr>,
    /// `DEPLOY_HOOK`: run with `sh -c` after each new certificate is installed.
    pub deploy_hook: Option<String>,
    #[serde(serialize_with = "serialize_secs")]
    pub deploy_hook_timeout: Duration,
}

fn serialize_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
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
    /// Validates `raw`, collecting every problem rather than stopping at the first.
    pub fn from_raw(raw: &RawSettings, need: Need) -> Result<Config, ConfigError> {
        let mut errors = Vec::new();

        let domains = raw.domains.clone().unwrap_or_default();
        let domains_file = raw
            .domains_file
            .clone()
            .filter(|p| !p.as_os_str().is_empty());
        let certificates = if need == Need::Daemon {
            read_certificates(&domains, read_file(domains_file.as_deref()), &[]).unwrap_or_else(
                |mut e| {
                    errors.append(&mut e);
                    Vec::new()
                },
            )
        } else {
            Vec::new()
        };

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

        let acme_directory = match (raw.acme_directory.as_deref().map(str::trim), raw.staging) {
            (Some(d), true) if !d.is_empty() && d != LETSENCRYPT_STAGING => {
                errors.push(format!(
                    "--staging selects Let's Encrypt staging but ACME_DIRECTORY is {d:?}: keep one of them"
                ));
                d.to_string()
            }
            (Some(d), _) if !d.is_empty() => {
                if !d.starts_with("https://") {
                    errors.push(format!("ACME_DIRECTORY {d:?}: must be an https:// URL"));
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
            if need == Need::Daemon && !p.is_file() {
                errors.push(format!("ACME_CA_BUNDLE {}: no such file", p.display()));
            }
        }

        let nonempty = |p: &Option<PathBuf>| p.clone().filter(|p| !p.as_os_str().is_empty());
        let data_dir = nonempty(&raw.data_dir).unwrap_or_else(|| DEFAULT_DATA_DIR.into());
        let certs_dir = nonempty(&raw.certs_dir).unwrap_or_else(|| DEFAULT_CERTS_DIR.into());
        let haproxy_certs_dir =
            nonempty(&raw.haproxy_certs_dir).unwrap_or_else(|| certs_dir.clone());

        let load_balancer_service_name = raw
            .load_balancer_service_name
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from);
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

        let rate_limits = parse_rate_limits(raw.rate_limits.as_deref(), &acme_directory)
            .unwrap_or_else(|e| {
                errors.push(format!("RATE_LIMITS: {e}"));
                None
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
        let deploy_hook_timeout = match raw.deploy_hook_timeout.as_deref().map(str::trim) {
            None | Some("") => DEFAULT_DEPLOY_HOOK_TIMEOUT,
            Some(t) => match parse_duration(t) {
                Some(d) if !d.is_zero() => d,
                _ => {
                    errors.push(format!(
                        "DEPLOY_HOOK_TIMEOUT {t:?}: expected a duration such as 60s, 5m or 1h"
                    ));
                    DEFAULT_DEPLOY_HOOK_TIMEOUT
                }
            },
        };

        if !errors.is_empty() {
            return Err(ConfigError(errors));
        }
        Ok(Config {
            admin_listen,
            deploy_hook,
            deploy_hook_timeout,
            rate_limits,
            certificates,
            domains,
            domains_file,
            prune: raw.prune,
            email,
            acme_directory,
            acme_ca_bundle,
            key_type,
            data_dir,
            certs_dir,
            haproxy_certs_dir,
            haproxy_runtime_api,
            load_balancer_service_name,
            responder_listen,
        })
    }
}

const DEFAULT_DEPLOY_HOOK_TIMEOUT: Duration = Duration::from_secs(60);

/// Parses "90", "90s", "5m", "1h".
fn parse_duration(s: &str) -> Option<Duration> {
    let (n, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = n.parse().ok()?;
    let secs = match unit.trim() {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

impl Config {
    /// Reads the wanted certificates again (DOMAINS_FILE may have changed), with those `added`
    /// at runtime (`domains add`, kept in the store) after them.
    pub fn read_certificates(&self, added: &[Vec<String>]) -> Result<Vec<CertSpec>, Vec<String>> {
        let file = read_file(self.domains_file.as_deref());
        read_certificates(&self.domains, file, added)
    }

    /// Like `read_certificates`, with a digest of what was read (DOMAINS, DOMAINS_FILE's bytes,
    /// the additions); the certificates are `None`, not parsed, when that digest is
    /// `unchanged_from`. At 100,000 certificates parsing costs ~0.4 s, reading and hashing the
    /// file a few ms (BENCHMARKS.md, scenario 3: a SIGHUP that changes nothing).
    pub fn read_certificates_since(
        &self,
        added: &[Vec<String>],
        unchanged_from: Option<u64>,
    ) -> Result<(u64, Option<Vec<CertSpec>>), Vec<String>> {
        use std::hash::{Hash, Hasher};
        let file = read_file(self.domains_file.as_deref());
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.domains.hash(&mut h);
        match &file {
            Some((_, Ok(content))) => content.hash(&mut h),
            // An unreadable file is an error each time it is read, never "unchanged".
            Some((_, Err(_))) => {
                return read_certificates(&self.domains, file, added).map(|s| (0, Some(s)))
            }
            None => {}
        }
        added.hash(&mut h);
        let digest = h.finish();
        if unchanged_from == Some(digest) {
            return Ok((digest, None));
        }
        read_certificates(&self.domains, file, added).map(|s| (digest, Some(s)))
    }
}

/// DOMAINS_FILE's path and content, read once: what is parsed is what was hashed.
fn read_file(
    path: Option<&std::path::Path>,
) -> Option<(&std::path::Path, std::io::Result<String>)> {
    path.map(|p| (p, std::fs::read_to_string(p)))
}

/// The error for a daemon with no certificate to manage.
pub fn nothing_to_manage() -> ConfigError {
    ConfigError(vec![
        "DOMAINS is empty: list the certificates to obtain, e.g. DOMAINS=\"a.com,www.a.com;b.com\" \
         (or in DOMAINS_FILE, one per line, or add one with `haproxy-acme domains add a.com`)"
            .into(),
    ])
}

/// The certificates of `DOMAINS` followed by those of `DOMAINS_FILE`; a name in both is an error.
fn read_certificates(
    domains: &str,
    file: Option<(&std::path::Path, std::io::Result<String>)>,
    added: &[Vec<String>],
) -> Result<Vec<CertSpec>, Vec<String>> {
    let mut errors = Vec::new();
    let mut specs = parse_domains(domains).unwrap_or_else(|e| {
        errors.extend(e);
        Vec::new()
    });
    if let Some((path, content)) = file {
        match content {
            Err(e) => errors.push(format!("DOMAINS_FILE {}: {e}", path.display())),
            Ok(content) => match parse_domains_file(&content) {
                Err(e) => errors.extend(e),
                Ok(more) => {
                    // name -> id, for the names of DOMAINS only (each source is checked on its own).
                    let in_domains: HashMap<&str, &str> = specs
                        .iter()
                        .flat_map(|s| s.names.iter().map(move |n| (n.as_str(), s.id.as_str())))
                        .collect();
                    for spec in &more {
                        for name in &spec.names {
                            if let Some(id) = in_domains.get(name.as_str()) {
                                errors.push(format!(
                                    "DOMAINS_FILE: {name:?} is listed twice (also in certificate {id:?} of DOMAINS)"
                                ));
                            }
                        }
                    }
                    specs.extend(more);
                }
            },
        }
    }
    if !added.is_empty() {
        let entries: Vec<String> = added.iter().map(|names| names.join(",")).collect();
        match parse_certificates(
            entries
                .iter()
                .map(|e| (format!("added certificate {e:?}"), e.as_str())),
            "added certificates",
        ) {
            Err(e) => errors.extend(e),
            Ok(more) => {
                let configured: HashMap<&str, &str> = specs
                    .iter()
                    .flat_map(|s| s.names.iter().map(move |n| (n.as_str(), s.id.as_str())))
                    .collect();
                for spec in &more {
                    for name in &spec.names {
                        if let Some(id) = configured.get(name.as_str()) {
                            errors.push(format!(
                                "{name:?} was added at runtime (certificate {:?}) and is also in \
                                 certificate {id:?} of DOMAINS or DOMAINS_FILE: run \
                                 `haproxy-acme domains remove {}` or remove it from the configuration",
                                spec.id, spec.id
                            ));
                        }
                    }
                }
                specs.extend(more);
            }
        }
    }
    if errors.is_empty() {
        Ok(specs)
    } else {
        Err(errors)
    }
}

/// Parses `DOMAINS`: `;` separates certificates, `,` the names of one certificate, the first
/// name being its id. Whitespace and empty entries are ignored. Every bad name is reported.
pub fn parse_domains(s: &str) -> Result<Vec<CertSpec>, Vec<String>> {
    parse_certificates(
        s.split(';')
            .map(|entry| (format!("DOMAINS entry {:?}", entry.trim()), entry)),
        "DOMAINS",
    )
}

/// Parses the content of `DOMAINS_FILE`: one certificate per line in the syntax of `DOMAINS`
/// (`;` also separates certificates), blank lines and `#` comments ignored. Errors name the line.
pub fn parse_domains_file(content: &str) -> Result<Vec<CertSpec>, Vec<String>> {
    let entries = content.lines().enumerate().flat_map(|(i, line)| {
        let line = line.split('#').next().unwrap_or("");
        line.split(';')
            .map(move |entry| (format!("DOMAINS_FILE line {}", i + 1), entry))
    });
    parse_certificates(entries, "DOMAINS_FILE")
}

/// Parses certificate entries, each `(where it is, "name,name,...")`, checking every name and
/// that no name is listed twice. `source` prefixes the duplicate errors.
fn parse_certificates<'a>(
    entries: impl IntoIterator<Item = (String, &'a str)>,
    source: &str,
) -> Result<Vec<CertSpec>, Vec<String>> {
    let mut errors = Vec::new();
    let mut specs = Vec::new();
    // name -> id of the certificate that lists it first
    let mut seen: HashMap<String, String> = HashMap::new();
    for (where_, entry) in entries {
        let mut names = Vec::new();
        for raw in entry.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match normalize_name(raw) {
                Err(why) => errors.push(format!("{where_}: {raw:?} {why}")),
                Ok(name) => {
                    let id = names.first().cloned().unwrap_or_else(|| name.clone());
                    if let Some(first) = seen.get(&name) {
                        let how = if *first == id {
                            "twice in the same certificate".to_string()
                        } else {
                            format!("also in certificate {first:?}")
                        };
                        errors.push(format!("{source}: {name:?} is listed twice ({how})"));
                    } else {
                        seen.insert(name.clone(), id);
                        names.push(name);
                    }
                }
            }
        }
        if !names.is_empty() {
            specs.push(CertSpec {
                id: names[0].clone(),
                names,
            });
        }
    }
    if errors.is_empty() {
        Ok(specs)
    } else {
        Err(errors)
    }
}

/// Normalizes one host name for HTTP-01: IDN to punycode, upper case folded, one trailing dot
/// dropped. The error says why the name cannot be used (it follows the quoted name).
pub fn normalize_name(raw: &str) -> Result<String, String> {
    let s = raw.strip_suffix('.').unwrap_or(raw);
    if s.contains('*') {
        return Err("is a wildcard: HTTP-01 cannot validate wildcards (they need DNS-01)".into());
    }
    let unbracketed = s.trim_start_matches('[').trim_end_matches(']');
    if unbracketed.parse::<IpAddr>().is_ok() {
        return Err("is an IP address, not a DNS host name".into());
    }
    if s.is_empty() {
        return Err("is empty".into());
    }
    let ascii = idna::domain_to_ascii(s)
        .map_err(|_| "is not a valid (internationalized) domain name".to_string())?;
    if ascii.len() > 253 {
        return Err(format!("is {} characters long (253 at most)", ascii.len()));
    }
    let labels: Vec<&str> = ascii.split('.').collect();
    if labels.len() < 2 {
        return Err(
            "is a single label: a certificate name needs a domain, such as example.com".into(),
        );
    }
    for label in &labels {
        if label.is_empty() {
            return Err("has an empty label (two dots in a row, or a leading dot)".into());
        }
        if label.len() > 63 {
            return Err(format!(
                "has a label of {} characters (63 at most)",
                label.len()
            ));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return Err(format!(
                "contains {c:?}: only letters, digits, '-' and '.' are allowed"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "has a label {label:?} that starts or ends with '-'"
            ));
        }
    }
    if labels
        .last()
        .is_some_and(|tld| tld.chars().all(|c| c.is_ascii_digit()))
    {
        return Err("ends in an all-numeric label, which is not a DNS host name".into());
    }
    Ok(ascii)
}

/// `RATE_LIMITS`: `auto`/unset, `off`, `lets-encrypt`, or `key=N/duration,...` with keys
/// `orders`, `exact-set`, `registered-domain`, `failed-validations` (a key left out is no limit)
/// and durations such as `90s`, `3h`, `7d`.
fn parse_rate_limits(value: Option<&str>, directory: &str) -> Result<Option<Limits>, String> {
    let v = value.map(str::trim).unwrap_or("");
    let is_lets_encrypt = directory
        .strip_prefix("https://")
        .and_then(|rest| rest.split(['/', ':']).next())
        .is_some_and(|host| host == "letsencrypt.org" || host.ends_with(".letsencrypt.org"));
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
            .map_err(|_| format!("{item:?}: {count:?} is not a count"))?;
        let window = window.trim();
        let (num, unit) = window.split_at(window.len().saturating_sub(1));
        let mult = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => {
                return Err(format!(
                    "{item:?}: duration {window:?} needs a unit s, m, h or d"
                ))
            }
        };
        let n: i64 = num
            .parse()
            .map_err(|_| format!("{item:?}: {window:?} is not a duration"))?;
        let limit = Some(Limit {
            count,
            window_secs: n * mult,
        });
        match key.trim() {
            "orders" => limits.orders = limit,
            "exact-set" => limits.exact_set = limit,
            "registered-domain" => limits.registered_domain = limit,
            "failed-validations" => limits.failed_validations = limit,
            other => {
                return Err(format!(
                    "unknown limit {other:?} (orders, exact-set, registered-domain, failed-validations)"
                ))
            }
        }
    }
    Ok(Some(limits))
}

fn validate_email(e: &str) -> Result<String, &'static str> {
    let e = e.strip_prefix("mailto:").unwrap_or(e);
    match e.split_once('@') {
        Some((local, domain))
            if !local.is_empty()
                && domain.contains('.')
                && !e.chars().any(|c| c.is_whitespace() || c == ',' || c == ';')
                && !domain.contains('@') =>
        {
            Ok(e.to_string())
        }
        _ => Err("not an e-mail address (expected name@example.com)"),
    }
}

fn parse_runtime_api(s: &str, lb: Option<&str>) -> Result<RuntimeApiAddr, String> {
    if let Some(path) = s.strip_prefix("unix:") {
        if !path.starts_with('/') {
            return Err(
                "the unix socket path must be absolute (unix:/run/haproxy/admin.sock)".into(),
            );
        }
        return Ok(RuntimeApiAddr::Unix(path.into()));
    }
    let port_only = s.strip_prefix(':').unwrap_or(s);
    if port_only.parse::<u16>().is_ok() {
        return match lb {
            Some(host) => Ok(RuntimeApiAddr::Tcp(format!("{host}:{port_only}"))),
            None => Err("a bare port needs LOAD_BALANCER_SERVICE_NAME to name the host".into()),
        };
    }
    match s.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
            Ok(RuntimeApiAddr::Tcp(s.to_string()))
        }
        _ => Err("expected unix:/path/to/socket, host:port, or a port".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(specs: &[CertSpec]) -> Vec<Vec<&str>> {
        specs
            .iter()
            .map(|s| s.names.iter().map(String::as_str).collect())
            .collect()
    }

    #[test]
    fn domains_syntax_of_the_old_stack() {
        let table: &[(&str, Vec<Vec<&str>>)] = &[
            (
                "a.com,www.a.com;b.com",
                vec![vec!["a.com", "www.a.com"], vec!["b.com"]],
            ),
            (
                " a.com , www.a.com ; ; b.com ;",
                vec![vec!["a.com", "www.a.com"], vec!["b.com"]],
            ),
            ("A.COM.", vec![vec!["a.com"]]),
            (",,a.com,,;", vec![vec!["a.com"]]),
            ("bücher.example", vec![vec!["xn--bcher-kva.example"]]),
            ("", vec![]),
            (" ; ", vec![]),
        ];
        for (input, want) in table {
            let got = parse_domains(input).unwrap_or_else(|e| panic!("{input:?}: {e:?}"));
            assert_eq!(&names(&got), want, "{input:?}");
            for s in &got {
                assert_eq!(s.id, s.names[0]);
            }
        }
    }

    #[test]
    fn bad_names_are_named_with_the_reason() {
        let table: &[(&str, &str)] = &[
            ("*.a.com", "wildcard"),
            ("a.com,*.a.com", "wildcard"),
            ("192.0.2.1", "IP address"),
            ("[::1]", "IP address"),
            ("localhost", "single label"),
            ("a..com", "empty label"),
            ("-a.com", "starts or ends with '-'"),
            ("a_b.com", "contains '_'"),
            ("a.123", "all-numeric"),
            (
                "a.com;b.com,a.com",
                "listed twice (also in certificate \"a.com\")",
            ),
            ("a.com,A.com", "twice in the same certificate"),
        ];
        for (input, reason) in table {
            let errs = parse_domains(input).expect_err(input);
            assert!(
                errs.iter().any(|e| e.contains(reason)),
                "{input:?}: {errs:?}"
            );
        }
        let long_label = format!("{}.com", "a".repeat(64));
        assert!(parse_domains(&long_label).unwrap_err()[0].contains("63 at most"));
        let long_name = format!("{}com", "abcdefghi.".repeat(26));
        assert!(parse_domains(&long_name).unwrap_err()[0].contains("253 at most"));
        // Every bad entry is reported, not only the first.
        assert_eq!(
            parse_domains("*.a.com;1.2.3.4;ok.com").unwrap_err().len(),
            2
        );
    }

    #[test]
    fn domains_file_lines_comments_and_errors_by_line() {
        let specs =
            parse_domains_file("# shop\na.com, www.a.com\n\n b.com # legacy\nc.com;d.com\n")
                .unwrap();
        assert_eq!(
            names(&specs),
            vec![
                vec!["a.com", "www.a.com"],
                vec!["b.com"],
                vec!["c.com"],
                vec!["d.com"]
            ]
        );
        let errs = parse_domains_file("a.com\n*.b.com\nc.com,a.com\n").unwrap_err();
        assert!(
            errs[0].starts_with("DOMAINS_FILE line 2: \"*.b.com\" is a wildcard"),
            "{errs:?}"
        );
        assert!(errs[1].contains("\"a.com\" is listed twice"), "{errs:?}");
    }

    /// A daemon configuration with DOMAINS="a.com" and a DOMAINS_FILE holding `content`.
    fn with_domains_file(content: &str) -> (tempfile::TempDir, PathBuf, Config) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("domains");
        std::fs::write(&file, content).unwrap();
        let raw = RawSettings {
            domains_file: Some(file.clone()),
            ..raw()
        };
        let c = Config::from_raw(&raw, Need::Daemon).unwrap();
        (dir, file, c)
    }

    #[test]
    fn a_re_read_of_the_same_sources_is_not_parsed_again() {
        let (_dir, file, c) = with_domains_file("b.com\n");
        let (d1, specs) = c.read_certificates_since(&[], None).unwrap();
        assert_eq!(names(&specs.unwrap()), vec![vec!["a.com"], vec!["b.com"]]);
        assert!(c
            .read_certificates_since(&[], Some(d1))
            .unwrap()
            .1
            .is_none());
        // A comment is a change of bytes: parsed (the specs then say nothing changed).
        std::fs::write(&file, "# x\nb.com\n").unwrap();
        let (d2, specs) = c.read_certificates_since(&[], Some(d1)).unwrap();
        assert_ne!(d1, d2);
        assert_eq!(names(&specs.unwrap()), vec![vec!["a.com"], vec!["b.com"]]);
        // So is an addition at runtime.
        let added = [vec!["c.com".to_string()]];
        assert!(c
            .read_certificates_since(&added, Some(d2))
            .unwrap()
            .1
            .is_some());
        // An unreadable file is an error every time, whatever was read before.
        std::fs::remove_file(&file).unwrap();
        assert!(c.read_certificates_since(&[], Some(d2)).is_err());
    }

    #[test]
    fn domains_and_domains_file_combine_without_duplicates() {
        let (_dir, file, c) = with_domains_file("b.com\n");
        assert_eq!(names(&c.certificates), vec![vec!["a.com"], vec!["b.com"]]);
        std::fs::write(&file, "c.com\nwww.a.com,a.com\n").unwrap();
        let errs = c.read_certificates(&[]).unwrap_err();
        assert!(
            errs[0].contains("also in certificate \"a.com\" of DOMAINS"),
            "{errs:?}"
        );
        std::fs::remove_file(&file).unwrap();
        assert!(c.read_certificates(&[]).unwrap_err()[0].starts_with("DOMAINS_FILE "));
        // DOMAINS_FILE alone is enough.
        std::fs::write(&file, "b.com\n").unwrap();
        let only_file = RawSettings {
            domains: None,
            domains_file: Some(file),
            ..Default::default()
        };
        assert!(Config::from_raw(&only_file, Need::Daemon).is_ok());
    }

    #[test]
    fn rate_limits_default_to_lets_encrypt_only_for_lets_encrypt() {
        let p = |v, d| parse_rate_limits(v, d);
        assert_eq!(
            p(None, LETSENCRYPT_PRODUCTION),
            Ok(Some(Limits::LETS_ENCRYPT))
        );
        assert_eq!(
            p(Some("auto"), LETSENCRYPT_STAGING),
            Ok(Some(Limits::LETS_ENCRYPT))
        );
        assert_eq!(p(None, "https://127.0.0.1:14000/dir"), Ok(None));
        assert_eq!(p(None, "https://letsencrypt.org.evil.test/dir"), Ok(None));
        assert_eq!(p(Some("off"), LETSENCRYPT_PRODUCTION), Ok(None));
        assert_eq!(
            p(Some("on"), "https://ca/dir"),
            Ok(Some(Limits::LETS_ENCRYPT))
        );
        let custom = p(Some("exact-set=1/7d, orders=10/90m"), "https://ca/dir")
            .unwrap()
            .unwrap();
        assert_eq!(
            custom.exact_set,
            Some(Limit {
                count: 1,
                window_secs: 7 * 86_400
            })
        );
        assert_eq!(
            custom.orders,
            Some(Limit {
                count: 10,
                window_secs: 5400
            })
        );
        assert_eq!(custom.registered_domain, None);
        assert!(p(Some("exact-set=1/7"), "x")
            .unwrap_err()
            .contains("needs a unit"));
        assert!(p(Some("bogus=1/7d"), "x")
            .unwrap_err()
            .contains("unknown limit"));
        assert!(p(Some("exact-set"), "x").is_err());
    }

    fn raw() -> RawSettings {
        RawSettings {
            domains: Some("a.com".into()),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_and_staging() {
        let c = Config::from_raw(&raw(), Need::Daemon).unwrap();
        assert_eq!(c.acme_directory, LETSENCRYPT_PRODUCTION);
        assert_eq!(c.key_type, KeyType::EcdsaP256);
        assert_eq!(c.responder_listen.to_string(), "0.0.0.0:80");
        assert_eq!(c.haproxy_runtime_api, None);
        assert_eq!(c.haproxy_certs_dir, c.certs_dir);
        let c = Config::from_raw(
            &RawSettings {
                staging: true,
                ..raw()
            },
            Need::Daemon,
        )
        .unwrap();
        assert_eq!(c.acme_directory, LETSENCRYPT_STAGING);
        let e = Config::from_raw(
            &RawSettings {
                staging: true,
                acme_directory: Some("https://ca/dir".into()),
                ..raw()
            },
            Need::Daemon,
        )
        .unwrap_err();
        assert!(e.0[0].contains("keep one of them"));
    }

    #[test]
    fn runtime_api_forms() {
        let p = |s, lb| parse_runtime_api(s, lb);
        assert_eq!(
            p("unix:/run/h.sock", None),
            Ok(RuntimeApiAddr::Unix("/run/h.sock".into()))
        );
        assert_eq!(
            p("127.0.0.1:9999", None),
            Ok(RuntimeApiAddr::Tcp("127.0.0.1:9999".into()))
        );
        assert_eq!(
            p("9999", Some("lb")),
            Ok(RuntimeApiAddr::Tcp("lb:9999".into()))
        );
        assert_eq!(
            p(":9999", Some("lb")),
            Ok(RuntimeApiAddr::Tcp("lb:9999".into()))
        );
        assert!(p("9999", None).is_err());
        assert!(p("unix:rel.sock", None).is_err());
        assert!(p("nonsense", None).is_err());
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let bad = RawSettings {
            domains: Some("*.a.com".into()),
            email: Some("nobody".into()),
            key_type: Some("dsa".into()),
            responder_listen: Some("eighty".into()),
            acme_directory: Some("http://insecure/dir".into()),
            ..Default::default()
        };
        let e = Config::from_raw(&bad, Need::Daemon).unwrap_err();
        assert_eq!(e.0.len(), 5, "{e}");
        // No certificate in the environment: the daemon may still have some added at runtime,
        // so `run` decides once it has read the store.
        let empty = Config::from_raw(&RawSettings::default(), Need::Daemon).unwrap();
        assert!(empty.certificates.is_empty());
        assert!(nothing_to_manage().0[0].contains("DOMAINS is empty"));
        assert!(Config::from_raw(&RawSettings::default(), Need::StoreOnly).is_ok());
    }

    #[test]
    fn admin_listen_is_loopback_unless_forced() {
        let with = |addr: &str, force: bool| {
            Config::from_raw(
                &RawSettings {
                    domains: Some("a.test".into()),
                    admin_listen: Some(addr.into()),
                    admin_listen_non_loopback: force,
                    ..Default::default()
                },
                Need::Daemon,
            )
        };
        assert_eq!(
            with("127.0.0.1:9120", false).unwrap().admin_listen,
            Some("127.0.0.1:9120".parse().unwrap())
        );
        assert!(with("[::1]:9120", false).is_ok());
        let e = with("0.0.0.0:9120", false).unwrap_err();
        assert!(e.0[0].contains("ADMIN_LISTEN_NON_LOOPBACK=true"), "{e}");
        assert!(with("10.1.2.3:9120", true).is_ok());
        assert!(with("localhost", false).unwrap_err().0[0].contains("127.0.0.1:9120"));
    }

    #[test]
    fn deploy_hook_timeout_spellings() {
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1d"), None);
        assert_eq!(parse_duration("soon"), None);
        let c = Config::from_raw(
            &RawSettings {
                deploy_hook_timeout: Some("0".into()),
                ..Default::default()
            },
            Need::StoreOnly,
        );
        assert!(c.unwrap_err().0[0].starts_with("DEPLOY_HOOK_TIMEOUT"));
    }

    #[test]
    fn added_certificates_join_the_configured_ones_without_sharing_a_name() {
        let c = Config::from_raw(
            &RawSettings {
                domains: Some("a.test,www.a.test".into()),
                ..Default::default()
            },
            Need::Daemon,
        )
        .unwrap();
        let specs = c
            .read_certificates(&[vec!["b.test".into(), "www.b.test".into()]])
            .unwrap();
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[1].id, "b.test");
        let e = c
            .read_certificates(&[vec!["b.test".into(), "www.a.test".into()]])
            .unwrap_err();
        assert!(
            e[0].contains("www.a.test") && e[0].contains("domains remove b.test"),
            "{e:?}"
        );
    }
}
