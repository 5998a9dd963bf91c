//! `import certbot DIR`: adopts the certificates of an existing certbot configuration directory
//! (`/etc/letsencrypt`) as issued, with their keys, so switching tools costs no issuance and no
//! rate limit. certbot keeps one lineage per `renewal/<name>.conf`, whose files are the symlinks
//! in `live/<name>/`.
//!
//! The renewal files are configobj `key = value` lines; only `server` (the ACME directory) is
//! read, by the few lines of `conf_value` rather than an INI crate.

use std::path::Path;

use haproxy_acme_state::{apply, Event, Phase, Record, UnixTime};
use serde::{Deserialize, Serialize};

use crate::config::{CertSpec, Config, Names, WantedSet};
use crate::ops::{Done, OpError};
use crate::pki;
use crate::store::{Change, Store};

/// One certbot lineage as read from disk: what the daemon needs to adopt it.
#[derive(Serialize, Deserialize)]
pub struct Lineage {
    pub name: String,
    /// The ACME directory it came from (`server` in its renewal file).
    pub server: Option<String>,
    pub fullchain_pem: String,
    pub key_pem: String,
}

// Key material: never print it.
impl std::fmt::Debug for Lineage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lineage")
            .field("name", &self.name)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

/// What was found in a certbot directory.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Found {
    pub lineages: Vec<Lineage>,
    /// Lineages that could not be read, with why.
    pub unreadable: Vec<String>,
    /// certbot's accounts (reported, not imported; see `read_certbot`).
    pub accounts: Vec<Account>,
}

/// A certbot account: its URL and its key's JWK type (the key itself is not read).
#[derive(Debug, Serialize, Deserialize)]
pub struct Account {
    pub uri: String,
    pub kty: String,
}

/// Reads the lineages of the certbot configuration directory `dir`.
///
/// Accounts are reported, not imported: certbot's account keys are RSA JWKs and instant-acme
/// loads only its own PKCS#8 ECDSA P-256 keys, so the daemon registers its own account (creating an
/// account does not count against the certificate rate limits).
pub fn read_certbot(dir: &Path) -> Result<Found, String> {
    let renewal = dir.join("renewal");
    let entries = std::fs::read_dir(&renewal).map_err(|e| {
        format!(
            "{}: {e} (expected certbot's configuration directory, e.g. /etc/letsencrypt, \
             with renewal/ and live/)",
            renewal.display()
        )
    })?;
    let mut found = Found::default();
    let mut confs: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "conf"))
        .collect();
    confs.sort();
    for conf in confs {
        let name = conf
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = match std::fs::read_to_string(&conf) {
            Ok(t) => t,
            Err(e) => {
                found
                    .unreadable
                    .push(format!("{name}: {}: {e}", conf.display()));
                continue;
            }
        };
        let live = dir.join("live").join(&name);
        let read = |file: &str| {
            std::fs::read_to_string(live.join(file))
                .map_err(|e| format!("{name}: {}: {e}", live.join(file).display()))
        };
        match (read("fullchain.pem"), read("privkey.pem")) {
            (Ok(fullchain_pem), Ok(key_pem)) => found.lineages.push(Lineage {
                name,
                server: conf_value(&text, "server"),
                fullchain_pem,
                key_pem,
            }),
            (Err(e), _) | (_, Err(e)) => found.unreadable.push(e),
        }
    }
    // accounts/<host>/<directory path...>/<account id>/{regr.json,private_key.json}
    let mut stack = vec![(dir.join("accounts"), 0)];
    while let Some((d, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.filter_map(Result::ok) {
            let p = e.path();
            if p.join("regr.json").is_file() {
                let json = |f: &str| {
                    std::fs::read_to_string(p.join(f))
                        .ok()
                        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                };
                let uri = json("regr.json")
                    .and_then(|v| v["uri"].as_str().map(String::from))
                    .unwrap_or_else(|| "(no uri)".into());
                let kty = json("private_key.json")
                    .and_then(|v| v["kty"].as_str().map(String::from))
                    .unwrap_or_else(|| "unknown".into());
                found.accounts.push(Account { uri, kty });
            } else if p.is_dir() && depth < 6 {
                stack.push((p, depth + 1));
            }
        }
    }
    Ok(found)
}

/// The value of `key` in a configobj file (`key = value`), outside or inside any section.
fn conf_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == key).then(|| v.trim().to_string())
    })
}

/// Adopts `found` into the store. A lineage becomes the record of the configured certificate with
/// the same names (so the daemon does not re-issue it), or a record of its own, not renewed until
/// it is configured. Never replaces a stored certificate that expires later.
pub async fn adopt(
    store: &dyn Store,
    config: &Config,
    wanted: &WantedSet,
    found: &Found,
    now: UnixTime,
) -> Result<Done, OpError> {
    let added = store.added().await?;
    let wanted: Vec<CertSpec> = wanted.read(&added).unwrap_or_default();
    let mut lines = Vec::new();
    let mut imported = Vec::new();
    for l in &found.lineages {
        match adopt_one(store, config, &wanted, l, now).await {
            Ok((id, line)) => {
                imported.push(id);
                lines.push(line);
            }
            Err(OpError::Refused(why)) => lines.push(format!("skipped {}: {why}", l.name)),
            Err(e) => return Err(e),
        }
    }
    for u in &found.unreadable {
        lines.push(format!("skipped {u}"));
    }
    for a in &found.accounts {
        lines.push(format!(
            "certbot account {} ({} key): not imported, instant-acme signs with ECDSA P-256 account \
             keys of its own; a new account is registered on first use (that costs no certificate \
             rate limit)",
            a.uri, a.kty
        ));
    }
    lines.push(format!(
        "{} of {} certificates imported",
        imported.len(),
        found.lineages.len() + found.unreadable.len()
    ));
    // A running daemon installs the imported certificates at once.
    Ok(Done {
        message: lines.join("\n"),
        wake: imported,
        reload: false,
    })
}

async fn adopt_one(
    store: &dyn Store,
    config: &Config,
    wanted: &[CertSpec],
    l: &Lineage,
    now: UnixTime,
) -> Result<(String, String), OpError> {
    let refused = |why: String| OpError::Refused(why);
    let leaf = pki::leaf(&l.fullchain_pem).map_err(|e| refused(e.to_string()))?;
    if !leaf
        .matches_key(&l.key_pem)
        .map_err(|e| refused(e.to_string()))?
    {
        return Err(refused(
            "privkey.pem is not the key of fullchain.pem".into(),
        ));
    }
    let meta = pki::chain_meta(&l.fullchain_pem, now).map_err(|e| refused(e.to_string()))?;
    if meta.not_after <= now {
        return Err(refused(
            "expired; the daemon issues a new one when it is configured".into(),
        ));
    }
    let Some(key_type) = leaf.key_type else {
        return Err(refused(
            "key type not supported (ecdsa-p256, ecdsa-p384, rsa2048, rsa4096)".into(),
        ));
    };
    if leaf.names.is_empty() {
        return Err(refused("no DNS names in the certificate".into()));
    }
    // The names become a file name and runtime-API arguments: only names the configuration
    // would accept.
    let leaf_names = Names::parse(&leaf.names).map_err(|e| {
        refused(format!(
            "its names cannot be managed here (HTTP-01 host names only): {}",
            e.join("; ")
        ))
    })?;
    // Take the configured certificate's id and name order when it lists the same names.
    let mut sorted = leaf_names.to_vec();
    sorted.sort();
    let spec = wanted.iter().find(|s| {
        let mut n = s.names().to_vec();
        n.sort();
        n == sorted
    });
    let names = spec.map_or(&leaf_names, |s| s.names());
    let id = names.id();
    let directory = l
        .server
        .clone()
        .unwrap_or_else(|| config.acme_directory.clone());

    let r = Record::new(names.to_vec(), key_type, now);
    let r = apply(
        &r,
        Event::Configured {
            names: names.to_vec(),
            key_type,
            acme_directory: directory.clone(),
            deploy_hook: config.deploy_hook.is_some(),
            // Adopted as issued under the profile it is wanted with (the certificate does not
            // say which it had): importing re-issues nothing.
            profile: spec
                .map_or(config.acme_profile.as_deref(), |s| {
                    s.profile_or(config.acme_profile.as_deref())
                })
                .map(String::from),
        },
        now,
    );
    let r = apply(&r, Event::CertificateStored { meta }, now);
    // Checked against the stored record and written in one update: an order finishing at the
    // same moment is never overwritten.
    let (chain_pem, key_pem, record, id2) = (
        l.fullchain_pem.clone(),
        l.key_pem.clone(),
        r.clone(),
        id.to_string(),
    );
    store
        .update(&id, move |old| {
            let refusal = old.as_ref().and_then(|old| {
                if let Some(c) = &old.cert {
                    if c.fingerprint == record.cert.as_ref().map_or("", |m| &m.fingerprint) {
                        return Some(format!("already in the store as {id2}"));
                    }
                    if c.not_after >= record.cert.as_ref().map_or(0, |m| m.not_after) {
                        return Some(format!(
                            "the store already has a certificate for {id2} that expires later"
                        ));
                    }
                }
                (old.phase() == Phase::Validating).then(|| {
                    format!(
                        "an order for {id2} is in flight; import again once it is done, or not at all"
                    )
                })
            });
            match refusal {
                Some(why) => (Change::Keep, Err(refused(why))),
                None => (
                    Change::PutAdopted {
                        record,
                        chain_pem,
                        key_pem,
                    },
                    Ok(()),
                ),
            }
        })
        .await??;
    let mut line = format!(
        "imported {} as {id} ({}; {}; expires {})",
        l.name,
        names.join(", "),
        key_type.as_str(),
        haproxy_acme_state::dump::rfc3339(r.cert.as_ref().map_or(0, |c| c.not_after))
    );
    let mut warnings = Vec::new();
    if spec.is_none() {
        warnings.push(format!(
            "not configured: it is not renewed until you add it to DOMAINS or run \
             `haproxy-acme domains add {}`",
            names.join(",")
        ));
    }
    if key_type != config.key_type {
        warnings.push(format!(
            "its key type differs from KEY_TYPE {}: the daemon re-issues it (set KEY_TYPE={} to keep it)",
            config.key_type.as_str(),
            key_type.as_str()
        ));
    }
    if directory != config.acme_directory {
        warnings.push(format!(
            "it comes from {directory}, not from ACME_DIRECTORY {}: the daemon re-issues it",
            config.acme_directory
        ));
    }
    if !warnings.is_empty() {
        line = format!("{line}\n  warning: {}", warnings.join("\n  warning: "));
    }
    Ok((id.into_string(), line))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_conf_server_is_read() {
        let conf = "version = 2.1.0\narchive_dir = /x\n\n[renewalparams]\naccount = abc\n\
                    server = https://127.0.0.1:14000/dir\nauthenticator = webroot\n";
        assert_eq!(
            conf_value(conf, "server").as_deref(),
            Some("https://127.0.0.1:14000/dir")
        );
        assert_eq!(conf_value(conf, "nope"), None);
    }

    #[tokio::test]
    async fn a_lineage_whose_names_do_not_normalize_is_skipped_with_the_reason() {
        use crate::cli::RawSettings;
        use crate::config::Need;
        let store = crate::store::memory::MemoryStore::new();
        let raw = RawSettings {
            domains: Some("a.test".into()),
            ..Default::default()
        };
        let (config, wanted) = Config::from_raw(&raw, Need::Daemon).unwrap();
        let lineage = |name: &str, names: &[&str]| {
            let key = rcgen::KeyPair::generate().unwrap();
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            let cert = rcgen::CertificateParams::new(names)
                .unwrap()
                .self_signed(&key)
                .unwrap();
            Lineage {
                name: name.into(),
                server: None,
                fullchain_pem: cert.pem(),
                key_pem: key.serialize_pem(),
            }
        };
        let found = Found {
            lineages: vec![
                lineage("wild", &["a.test", "*.a.test"]),
                lineage("b", &["B.test"]),
            ],
            ..Default::default()
        };
        let done = adopt(&store, &config, &wanted, &found, 1_700_000_000)
            .await
            .unwrap();
        assert!(
            done.message.contains(
                "skipped wild: its names cannot be managed here (HTTP-01 host names only): \
                 \"*.a.test\" is a wildcard"
            ),
            "{}",
            done.message
        );
        assert!(done.message.contains("1 of 2 certificates imported"));
        assert_eq!(done.wake, vec!["b.test".to_string()]);
        assert!(store.get("a.test").await.unwrap().is_none());
        assert_eq!(
            store.get("b.test").await.unwrap().unwrap().names,
            vec!["b.test".to_string()]
        );
    }

    #[test]
    fn a_directory_that_is_not_certbots_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = read_certbot(dir.path()).unwrap_err();
        assert!(
            e.contains("renewal") && e.contains("/etc/letsencrypt"),
            "{e}"
        );
    }
}
