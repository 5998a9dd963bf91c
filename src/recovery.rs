//! A lost or damaged store, and the ways out. At start the daemon refuses a store that does not
//! know certificates CERTS_DIR holds for wanted ids ([`check_certs_dir`]; the sled backend
//! refuses a store behind its marker by itself), since starting on it would order them again with
//! new keys. The ways out, each run with the daemon stopped except `backup`:
//! - [`rebuild`]: moves a damaged store aside (never deleting it) and adopts the certificate files
//!   of CERTS_DIR (`<id>.pem`: chain and key) as issued records, through `import::adopt`, the path
//!   `import certbot` takes (key checked against the leaf, unexpired, configured names);
//! - [`backup`]: a snapshot file (0600, written atomically) of every tree, keys and account
//!   credentials included, taken by the running daemon through its admin socket, or from the
//!   store when none runs;
//! - [`restore`]: checks a snapshot file whole, then moves the current store aside and creates
//!   the store from it.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use haproxy_acme_state::UnixTime;

use crate::admin::client::{Answer, Ask, Client, Outcome};
use crate::clock::unix_now;
use crate::commands::Exit;
use crate::config::{CertSpec, Config, WantedSet};
use crate::import::{Found, Lineage};
use crate::installer::DEFAULT_CERT_FILE;
use crate::pki;
use crate::store::sled::{snapshot, SledStore, STORE_DIR};
use crate::store::{Store, StoreError};

/// Exit code of a refusal to start on (or to read) a damaged store.
pub const EXIT_DAMAGED: u8 = 4;

/// The `<id>.pem` files of CERTS_DIR (not the default certificate, not a hidden temporary), as
/// (id, path), in id order.
fn certificate_files(certs_dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(certs_dir) else {
        return Vec::new();
    };
    let mut files: Vec<(String, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let id = name.strip_suffix(".pem")?;
            (name != DEFAULT_CERT_FILE && !name.starts_with('.'))
                .then(|| (id.to_string(), e.path()))
        })
        .collect();
    files.sort();
    files
}

/// The ids wanted now: the configured ones and the runtime additions.
fn wanted_ids<'a>(specs: &'a [CertSpec], added: &'a [Vec<String>]) -> HashSet<&'a str> {
    let mut ids: HashSet<&str> = specs.iter().map(|s| s.id().as_str()).collect();
    ids.extend(added.iter().filter_map(|n| n.first()).map(String::as_str));
    ids
}

/// Why the certificate file `path` is not worth keeping (`None`: it holds an unexpired
/// certificate with its key, which `rebuild` would adopt).
fn unusable(path: &Path, now: UnixTime) -> Option<String> {
    let bundle = std::fs::read_to_string(path).map_err(|e| e.to_string());
    let (chain, key) = match bundle.and_then(|b| pki::split_bundle(&b).map_err(|e| e.to_string())) {
        Ok(parts) => parts,
        Err(e) => return Some(e),
    };
    match (pki::leaf(&chain), pki::chain_meta(&chain, now)) {
        (Ok(leaf), Ok(meta)) => match leaf.matches_key(&key) {
            Ok(true) if meta.not_after > now => None,
            Ok(true) => Some("expired".into()),
            Ok(false) => Some("its key is not the certificate's".into()),
            Err(e) => Some(e.to_string()),
        },
        (Err(e), _) | (_, Err(e)) => Some(e.to_string()),
    }
}

/// Refuses a store that does not know a certificate CERTS_DIR holds for a wanted id (no record,
/// or a record that never had a certificate), when that file holds an unexpired certificate with
/// its key: the store was lost, emptied or replaced, and starting on it would order those
/// certificates again with new keys. One scan of the store, only when files of wanted ids exist;
/// only the files the store lacks are read.
pub async fn check_certs_dir(
    store: &dyn Store,
    config: &Config,
    specs: &[CertSpec],
    now: UnixTime,
) -> Result<(), StoreError> {
    // The directory first: most first starts find no certificate file, and then no set of
    // the wanted ids is built (0.5 s at 1,000,000 certificates).
    let mut files = certificate_files(&config.certs_dir);
    if files.is_empty() {
        return Ok(());
    }
    let added = store.added().await?;
    let ids = wanted_ids(specs, &added);
    files.retain(|(id, _)| ids.contains(id.as_str()));
    if files.is_empty() {
        return Ok(());
    }
    let candidates: HashSet<String> = files.iter().map(|(id, _)| id.clone()).collect();
    let known = Arc::new(Mutex::new(HashSet::new()));
    let (sink, wanted) = (known.clone(), Arc::new(candidates));
    store
        .scan(Box::new(move |r| {
            if wanted.contains(&r.id) && (r.cert.is_some() || r.installed_fingerprint.is_some()) {
                sink.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(r.id);
            }
        }))
        .await?;
    let known = known
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut lacking = Vec::new();
    for (id, path) in files.iter().filter(|(id, _)| !known.contains(id)) {
        match unusable(path, now) {
            None => lacking.push(id.as_str()),
            Some(why) => tracing::warn!(
                file = %path.display(),
                "a certificate file the store does not know, not worth keeping ({why}): it is \
                 replaced when the certificate is issued"
            ),
        }
    }
    if lacking.is_empty() {
        return Ok(());
    }
    let shown: Vec<String> = lacking
        .iter()
        .take(5)
        .map(|id| format!("{id}.pem"))
        .collect();
    let more = match lacking.len() {
        n if n > 5 => format!(" and {} more", n - 5),
        _ => String::new(),
    };
    Err(StoreError::Damaged {
        path: config.data_dir.join(STORE_DIR),
        detail: format!(
            "CERTS_DIR {} holds certificates the store has no issued record of: {}{more}",
            config.certs_dir.display(),
            shown.join(", ")
        ),
    })
}

/// Refuses to go on while a daemon (or any process) holds the store of DATA_DIR.
async fn ensure_stopped(config: &Config) -> Result<(), Exit> {
    let client = Client::new(&config.data_dir);
    if let Ok(Some(_)) = client.send(&Ask::Healthz).await {
        return Err(Exit(
            2,
            format!(
                "a daemon runs on DATA_DIR {} (its admin socket answers): stop it first",
                config.data_dir.display()
            ),
        ));
    }
    match SledStore::in_use(&config.data_dir) {
        Ok(false) => Ok(()),
        Ok(true) => Err(Exit(
            2,
            format!(
                "the store in {} is held by another process (a daemon starting or stopping?): \
                 stop it first",
                config.data_dir.join(STORE_DIR).display()
            ),
        )),
        Err(e) => Err(Exit(
            1,
            format!("cannot check {}: {e}", config.data_dir.display()),
        )),
    }
}

fn store_exit(e: StoreError) -> Exit {
    match e {
        StoreError::Damaged { .. } => Exit(EXIT_DAMAGED, e.to_string()),
        e => Exit(1, e.to_string()),
    }
}

/// `rebuild`: adopts the certificate files of CERTS_DIR for wanted ids as issued records, so
/// nothing is ordered again. A damaged store is moved aside first and a new one created (its
/// ACME accounts, rate-limit ledger and runtime additions are not recovered: a new account is
/// registered on first use); an intact one keeps what it has and gains what it lacks (after a
/// `restore` of an older backup, say). Returns the report.
pub async fn rebuild(config: &Config, wanted: &WantedSet) -> Result<String, Exit> {
    ensure_stopped(config).await?;
    let now = unix_now();
    let mut report = Vec::new();
    let existed = config.data_dir.join(STORE_DIR).exists();
    let store = match SledStore::open(&config.data_dir) {
        Ok(store) => {
            report.push(
                if existed {
                    "the store is intact: the certificates it lacks are added to it"
                } else {
                    "there was no store: a new one is built from the certificate files"
                }
                .to_string(),
            );
            store
        }
        Err(StoreError::Damaged { path, detail }) => {
            let aside = SledStore::move_aside(&config.data_dir, "damaged", now)
                .map_err(|e| Exit(1, format!("cannot move {} aside: {e}", path.display())))?
                .map_or_else(String::new, |p| p.display().to_string());
            report.push(format!(
                "the damaged store was moved to {aside} ({detail}); a new store is built from \
                 the certificate files"
            ));
            SledStore::open(&config.data_dir).map_err(store_exit)?
        }
        Err(e) => return Err(store_exit(e)),
    };
    let sled = Arc::new(store);
    let store: Arc<dyn Store> = sled.clone();
    let added = store.added().await.map_err(store_exit)?;
    let ids = wanted_ids(wanted.initial(), &added);
    let mut found = Found::default();
    for (id, path) in certificate_files(&config.certs_dir) {
        let name = format!("{id}.pem");
        if !ids.contains(id.as_str()) {
            found.unreadable.push(format!(
                "{name}: not a wanted certificate (DOMAINS, DOMAINS_FILE, `domains add`)"
            ));
            continue;
        }
        let bundle = std::fs::read_to_string(&path).map_err(|e| e.to_string());
        match bundle.and_then(|b| pki::split_bundle(&b).map_err(|e| e.to_string())) {
            Ok((fullchain_pem, key_pem)) => found.lineages.push(Lineage {
                name,
                server: None,
                fullchain_pem,
                key_pem,
            }),
            Err(e) => found.unreadable.push(format!("{name}: {e}")),
        }
    }
    let done = crate::import::adopt(store.as_ref(), config, wanted, &found, now)
        .await
        .map_err(|e| Exit(1, e.to_string()))?;
    // The store now agrees with CERTS_DIR: it is judged by its marker from here on.
    sled.seal().await.map_err(store_exit)?;
    report.push(done.message);
    Ok(report.join("\n"))
}

/// `backup FILE`: a snapshot from the running daemon, or from the store when none runs, written
/// to FILE atomically with mode 0600.
pub async fn backup(config: &Config, file: &Path) -> Result<String, Exit> {
    let client = Client::new(&config.data_dir);
    let asked = client.send(&Ask::Backup).await.map_err(|e| {
        Exit(
            1,
            format!(
                "asking the daemon through {}: {e}",
                client.socket().display()
            ),
        )
    })?;
    let (bytes, source) = match asked {
        Some(Answer {
            outcome: Outcome::Done,
            body,
        }) => (body.into_bytes(), "from the running daemon"),
        Some(a) => {
            return Err(Exit(
                1,
                format!("the daemon did not take the backup: {}", a.body.trim()),
            ))
        }
        None => {
            let store = SledStore::open(&config.data_dir).map_err(store_exit)?;
            let bytes = store.snapshot(unix_now()).await.map_err(store_exit)?;
            (bytes, "from the store (no daemon runs)")
        }
    };
    let snap = snapshot::parse(&bytes)
        .map_err(|e| Exit(1, format!("the snapshot taken cannot be read back: {e}")))?;
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Exit(2, format!("{} is not a file name", file.display())))?;
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    crate::installer::write_atomic(dir, name, &bytes).map_err(|e| Exit(1, e.to_string()))?;
    Ok(format!(
        "wrote {} (0600) {source}: {}",
        file.display(),
        snap.summary()
    ))
}

/// `restore FILE`: checks the snapshot whole (refusing a truncated, damaged or foreign file
/// before anything changes), moves the current store aside, and creates the store from it.
pub async fn restore(config: &Config, file: &Path) -> Result<String, Exit> {
    let bytes =
        std::fs::read(file).map_err(|e| Exit(2, format!("cannot read {}: {e}", file.display())))?;
    let snap = snapshot::parse(&bytes).map_err(|e| {
        Exit(
            2,
            format!("{} is refused: {e}. Nothing was changed", file.display()),
        )
    })?;
    ensure_stopped(config).await?;
    let aside = SledStore::move_aside(&config.data_dir, "replaced", unix_now())
        .map_err(|e| Exit(1, format!("cannot move the current store aside: {e}")))?;
    SledStore::restore(&config.data_dir, &snap).map_err(store_exit)?;
    let before = match aside {
        Some(p) => format!("the previous store is in {}", p.display()),
        None => "there was no store before".into(),
    };
    Ok(format!(
        "restored {} from {} into {}; {before}. Certificates issued after this backup are not \
         in it: `haproxy-acme rebuild` adds their files from CERTS_DIR",
        snap.summary(),
        file.display(),
        config.data_dir.join(STORE_DIR).display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_wanted_certificate_files_are_candidates() {
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "a.test.pem",
            "b.test.pem",
            DEFAULT_CERT_FILE,
            ".a.test.pem.tmp",
            "notes.txt",
        ] {
            std::fs::write(dir.path().join(f), "x").unwrap();
        }
        // Filtered by the wanted ids as `check_certs_dir` does.
        let mut files = certificate_files(dir.path());
        files.retain(|(id, _)| id != "b.test");
        let ids: Vec<&str> = files.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, vec!["a.test"]);
        assert!(certificate_files(&dir.path().join("missing")).is_empty());
    }

    #[test]
    fn only_an_unexpired_certificate_with_its_key_is_worth_refusing_a_start_for() {
        let now = 1_700_000_000;
        let dir = tempfile::tempdir().unwrap();
        let bundle = |days: i64, own_key: bool| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(vec!["a.test".to_string()]).unwrap();
            params.not_before = rcgen::date_time_ymd(2023, 1, 1);
            params.not_after =
                time::OffsetDateTime::from_unix_timestamp(now + days * 86_400).unwrap();
            let cert = params.self_signed(&key).unwrap();
            let other = rcgen::KeyPair::generate().unwrap();
            let key = if own_key { key } else { other };
            format!("{}{}", cert.pem(), key.serialize_pem())
        };
        let file = |name: &str, text: String| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        assert_eq!(unusable(&file("good.pem", bundle(30, true)), now), None);
        let why = |p: PathBuf| unusable(&p, now).unwrap();
        assert_eq!(why(file("old.pem", bundle(-1, true))), "expired");
        assert!(why(file("other.pem", bundle(30, false))).contains("not the certificate's"));
        assert!(why(file("junk.pem", "junk".into())).contains("no PEM block"));
        assert!(why(dir.path().join("missing.pem")).contains("No such file"));
    }
}
