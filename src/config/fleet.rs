//! The fleet settings (`POSTGRES_URL`, `STORE_KEY_FILE`, `NODE_NAME`, `LEASE_TIME`): present
//! together as a [`Fleet`] or not at all; the URL's password never prints.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

/// The shortest and longest lease: below 2 s a busy PostgreSQL would make leaders flap; above
/// 10 min a dead leader would hold the CA up for long.
const MIN_LEASE: Duration = Duration::from_secs(2);
const MAX_LEASE: Duration = Duration::from_secs(600);
const DEFAULT_LEASE: Duration = Duration::from_secs(15);

/// A PostgreSQL connection string: Debug and Serialize show it without its password.
#[derive(Clone, PartialEq, Eq)]
pub struct DbUrl(String);

impl DbUrl {
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        let s = &self.0;
        if let Some(rest) = s
            .strip_prefix("postgres://")
            .or_else(|| s.strip_prefix("postgresql://"))
        {
            let scheme = &s[..s.len() - rest.len()];
            if let Some((auth, host)) = rest.split_once('@') {
                if let Some((user, _)) = auth.split_once(':') {
                    return format!("{scheme}{user}:***@{host}");
                }
            }
            return s.clone();
        }
        s.split_whitespace()
            .map(|kv| match kv.split_once('=') {
                Some(("password", _)) => "password=***".to_string(),
                _ => kv.to_string(),
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for DbUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

/// One instance of a fleet sharing a PostgreSQL store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fleet {
    pub postgres_url: DbUrl,
    pub store_key_file: PathBuf,
    pub node_name: String,
    #[serde(serialize_with = "secs")]
    pub lease_time: Duration,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// The fleet settings of `raw`, each problem pushed to `errors`.
pub fn from_raw(raw: &crate::cli::RawSettings, errors: &mut Vec<String>) -> Option<Fleet> {
    let url = raw
        .postgres_url
        .as_ref()
        .map(|u| u.expose().trim().to_string())
        .filter(|u| !u.is_empty());
    let Some(url) = url else {
        for (set, name) in [
            (raw.store_key_file.is_some(), "STORE_KEY_FILE"),
            (raw.lease_time.is_some(), "LEASE_TIME"),
        ] {
            if set {
                errors.push(format!(
                    "{name} is set but POSTGRES_URL is not: it belongs to a fleet sharing a \
                     PostgreSQL store (set POSTGRES_URL, or remove {name})"
                ));
            }
        }
        return None;
    };
    let url = DbUrl(url);
    if let Err(e) = url.expose().parse::<tokio_postgres::Config>() {
        errors.push(format!(
            "POSTGRES_URL {}: not a PostgreSQL URL or key=value string ({e})",
            url.redacted()
        ));
    }
    let key_file = match &raw.store_key_file {
        Some(f) => {
            if let Err(e) = crate::store::postgres::seal::SealKey::from_file(f) {
                errors.push(e);
            }
            f.clone()
        }
        None => {
            errors.push(
                "POSTGRES_URL needs STORE_KEY_FILE: the key that encrypts the private keys in the \
                 shared store, the same file on every instance (make one with `openssl rand -hex \
                 32 > FILE`, mode 0600)"
                    .into(),
            );
            PathBuf::new()
        }
    };
    let node_name = match raw.node_name.as_deref().map(str::trim) {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => host_name(),
    };
    if node_name.is_empty() || node_name.len() > 200 || node_name.contains(char::is_control) {
        errors.push(format!(
            "NODE_NAME {node_name:?}: give each instance a name of 1 to 200 printable characters"
        ));
    }
    let lease_time = match raw.lease_time.as_deref() {
        None => DEFAULT_LEASE,
        Some(s) => match super::parse_duration(s) {
            Ok(d) if (MIN_LEASE..=MAX_LEASE).contains(&d) => d,
            Ok(d) => {
                errors.push(format!(
                    "LEASE_TIME {s:?} ({d:?}): must be between {MIN_LEASE:?} and {MAX_LEASE:?}"
                ));
                DEFAULT_LEASE
            }
            Err(e) => {
                errors.push(format!("LEASE_TIME: {e}"));
                DEFAULT_LEASE
            }
        },
    };
    Some(Fleet {
        postgres_url: url,
        store_key_file: key_file,
        node_name,
        lease_time,
    })
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_print() {
        let u = DbUrl("postgres://acme:s3cret@db:5432/acme".into());
        assert_eq!(u.redacted(), "postgres://acme:***@db:5432/acme");
        assert_eq!(format!("{u:?}"), "postgres://acme:***@db:5432/acme");
        assert_eq!(
            serde_json::to_string(&u).unwrap(),
            "\"postgres://acme:***@db:5432/acme\""
        );
        let kv = DbUrl("host=db user=acme password=s3cret dbname=acme".into());
        assert_eq!(kv.redacted(), "host=db user=acme password=*** dbname=acme");
        let none = DbUrl("postgres://acme@db/acme".into());
        assert_eq!(none.redacted(), "postgres://acme@db/acme");
    }
}
