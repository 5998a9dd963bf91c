//! Unit tests of `store::sled`.

use super::*;
use haproxy_acme_state::{apply, CertMeta, Event, KeyType};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// A record as version 1 wrote it. Persisted formats are contracts: this must keep loading.
const RECORD_V1: &str = r#"{"schema_version":1,"id":"a.test","names":["a.test","www.a.test"],
    "key_type":"ecdsa-p256","phase":"validating","order":{"url":"https://ca/order/1",
    "created_at":10,"challenges":[{"token":"tok","key_authorization":"tok.thumb"}],
    "key_generated":true},"cert":null,"installed_fingerprint":null,"renew_at":null,
    "failure":null,"created_at":10,"updated_at":10}"#;

/// `open` again and again while it finds the store locked, for at most `patience`: a store
/// dropped (or restored) just before lets go of its lock only once sled's I/O threads finish
/// their last writes (a loaded machine showed it).
fn when_unlocked<T>(
    patience: std::time::Duration,
    open: impl Fn() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let deadline = std::time::Instant::now() + patience;
    loop {
        match open() {
            Err(StoreError::Locked(_)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            other => return other,
        }
    }
}

/// Opens the store at `dir` again ([`when_unlocked`]).
pub(super) fn reopen(dir: &Path) -> Result<Inner, StoreError> {
    when_unlocked(std::time::Duration::from_secs(10), || Inner::open(dir))
}

/// [`reopen`] for the daemon's [`SledStore`].
fn reopen_sled(dir: &Path) -> SledStore {
    when_unlocked(std::time::Duration::from_secs(10), || SledStore::open(dir)).unwrap()
}

#[test]
fn ledger_is_per_directory_in_time_order_and_forgets_the_old() {
    use haproxy_acme_state::ledger::Entry;
    let dir = tempfile::tempdir().unwrap();
    let store = Inner::open(dir.path()).unwrap();
    store
        .ledger_append("https://ca/dir", &Entry::Order { at: 300 }, 0)
        .unwrap();
    store
        .ledger_append("https://ca/dir", &Entry::Order { at: 100 }, 0)
        .unwrap();
    store
        .ledger_append("https://other/dir", &Entry::Order { at: 200 }, 0)
        .unwrap();
    let got = store.ledger_since("https://ca/dir", 0).unwrap();
    assert_eq!(
        got,
        vec![Entry::Order { at: 100 }, Entry::Order { at: 300 }]
    );
    assert_eq!(
        store.ledger_since("https://ca/dir", 101).unwrap(),
        vec![Entry::Order { at: 300 }]
    );
    // Appending with keep_since = 250 forgets the entry at 100.
    store
        .ledger_append("https://ca/dir", &Entry::Order { at: 400 }, 250)
        .unwrap();
    assert_eq!(
        store
            .ledger_since("https://ca/dir", i64::MIN)
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        store
            .ledger_since("https://other/dir", i64::MIN)
            .unwrap()
            .len(),
        1
    );
}

/// An observation (installed, a renewal window) and a ledger entry are written without a flush
/// of their own; the next durable write flushes them with itself. A new record is flushed even
/// as an observation (it is a new generation).
#[test]
fn observations_and_ledger_entries_wait_for_the_next_flush() {
    use haproxy_acme_state::ledger::Entry;
    let dir = tempfile::tempdir().unwrap();
    let store = Inner::open(dir.path()).unwrap();
    let flushed = || store.flushed.load(Ordering::Relaxed);
    let a = Record::new(vec!["a.test".into()], KeyType::EcdsaP256, 1);
    let observe = |r: &Record| store.apply_change("a.test", Change::PutObservation(r.clone()));
    observe(&a).unwrap();
    let after_new = flushed();
    assert!(after_new > 0, "a new record is flushed");
    let observed = Record { updated_at: 7, ..a };
    observe(&observed).unwrap();
    let entry = Entry::Order { at: 300 };
    store.ledger_append("https://ca/dir", &entry, 0).unwrap();
    assert_eq!(flushed(), after_new, "neither flushed on its own");
    assert_eq!(store.get("a.test").unwrap().as_ref(), Some(&observed));
    let b = Record::new(vec!["b.test".into()], KeyType::EcdsaP256, 1);
    store.put(&b).unwrap();
    assert!(flushed() > after_new);
    assert_eq!(store.db.flush().unwrap(), 0, "nothing left unflushed");
    drop(store);
    let store = reopen(dir.path()).unwrap();
    assert_eq!(store.get("a.test").unwrap(), Some(observed));
    assert_eq!(store.ledger_since("https://ca/dir", 0).unwrap().len(), 1);
}

#[test]
fn version_1_records_still_load() {
    let r = decode("a.test", RECORD_V1.as_bytes()).unwrap();
    assert_eq!(r.names, vec!["a.test", "www.a.test"]);
    assert!(r.order().unwrap().key_generated);
}

#[test]
fn unknown_versions_and_garbage_are_refused_with_the_id() {
    let newer = RECORD_V1.replace("\"schema_version\":1", "\"schema_version\":99");
    let e = decode("a.test", newer.as_bytes()).unwrap_err().to_string();
    assert!(
        e.contains("a.test") && e.contains("schema_version 99"),
        "{e}"
    );
    assert!(decode("b.test", b"\x00garbage")
        .unwrap_err()
        .to_string()
        .contains("b.test"));
}

#[test]
fn certificate_and_key_are_stored_together() {
    let dir = tempfile::tempdir().unwrap();
    let store = Inner::open(dir.path()).unwrap();
    let r = Record::new(vec!["a.test".into()], KeyType::EcdsaP256, 1);
    let r = apply(&r, Event::OrderCreated { url: "u".into() }, 1);
    store.put(&r).unwrap();
    let meta = CertMeta {
        serial: "1".into(),
        not_before: 1,
        not_after: 2,
        fingerprint: "f".into(),
        issued_at: 1,
    };
    let issued = apply(&r, Event::CertificateStored { meta }, 1);
    // Without a stored key, storing the certificate is refused and nothing changes.
    assert!(store.put_certificate(&issued, "CHAIN").is_err());
    assert_eq!(store.get("a.test").unwrap().unwrap(), r);
    let with_key = apply(&r, Event::KeyStored, 1);
    store.put_with_pending_key(&with_key, "KEY").unwrap();
    assert_eq!(store.pending_key("a.test").unwrap().as_deref(), Some("KEY"));
    store.put_certificate(&issued, "CHAIN").unwrap();
    assert_eq!(
        store.certificate("a.test").unwrap(),
        Some(("CHAIN".to_string(), "KEY".to_string()))
    );
    assert_eq!(store.pending_key("a.test").unwrap(), None);
    let other = Record::new(vec!["b.test".into()], KeyType::EcdsaP256, 1);
    store.put(&other).unwrap();
    store.delete("b.test").unwrap();
    assert_eq!(store.get("b.test").unwrap(), None);
    drop(store);
    // Everything is there after reopening, and a second opener is told the store is locked.
    let store = reopen(dir.path()).unwrap();
    let mut all = Vec::new();
    store.for_each_record(|r| all.push(r)).unwrap();
    assert_eq!(all, vec![issued]);
    assert!(matches!(
        Inner::open(dir.path()),
        Err(StoreError::Locked(_))
    ));
    let mode = fs::metadata(dir.path()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
}

/// A store with `n` issued certificates (record, chain and key each), an account and a
/// runtime addition, as the daemon leaves it.
pub(super) fn filled(dir: &Path, n: usize) -> Inner {
    let store = Inner::open(dir).unwrap();
    store.seal().unwrap();
    for i in 0..n {
        let r = Record::new(vec![format!("s{i}.test")], KeyType::EcdsaP256, 1);
        let r = apply(&r, Event::OrderCreated { url: "u".into() }, 1);
        store.put(&r).unwrap();
        let r = apply(&r, Event::KeyStored, 1);
        store
            .put_with_pending_key(&r, &format!("KEY {i} {}", "k".repeat(200)))
            .unwrap();
        let meta = CertMeta {
            serial: format!("{i}"),
            not_before: 1,
            not_after: 2,
            fingerprint: format!("f{i}"),
            issued_at: 1,
        };
        let r = apply(&r, Event::CertificateStored { meta }, 1);
        store
            .put_certificate(&r, &format!("CHAIN {i} {}", "c".repeat(2000)))
            .unwrap();
    }
    store.put_account("https://ca/dir", b"{\"id\":1}").unwrap();
    store
        .put_account_key("https://ca/dir", &[0, 1, 2, 255])
        .unwrap();
    store.put_added_domains(&[vec!["x.test".into()]]).unwrap();
    store
}

/// The length of a file up to its last non-zero byte.
fn used_len(path: &Path) -> u64 {
    let bytes = fs::read(path).unwrap();
    bytes
        .iter()
        .rposition(|b| *b != 0)
        .map_or(0, |i| i as u64 + 1)
}

#[test]
fn an_emptied_truncated_or_half_overwritten_store_is_refused_with_what_was_lost() {
    use std::os::unix::fs::FileExt;
    type Damage = fn(&Path);
    let damages: [(&str, Damage); 3] = [
        ("emptied", |store| {
            fs::remove_dir_all(store).unwrap();
            fs::create_dir(store).unwrap();
        }),
        // sled pads its file to a 512 KiB segment with zeros: the damage cuts into the data.
        ("truncated", |store| {
            let used = used_len(&store.join("db"));
            let db = fs::OpenOptions::new()
                .write(true)
                .open(store.join("db"))
                .unwrap();
            db.set_len(used / 2).unwrap();
        }),
        ("half overwritten", |store| {
            let used = used_len(&store.join("db"));
            let db = fs::OpenOptions::new()
                .write(true)
                .open(store.join("db"))
                .unwrap();
            db.write_all_at(&vec![0xAB; (used / 2) as usize], used / 2)
                .unwrap();
        }),
    ];
    for (what, damage) in damages {
        let dir = tempfile::tempdir().unwrap();
        drop(filled(dir.path(), 3));
        let intact = reopen(dir.path()).unwrap();
        let generation = intact.generation().unwrap();
        assert_eq!(
            generation,
            3 * 2 + 1,
            "3 records, 3 certificates, 1 addition"
        );
        drop(intact);
        damage(&dir.path().join(STORE_DIR));
        // sled either recovers a shorter store silently (caught by the marker) or reports
        // corruption itself; both are refused as damage.
        match reopen(dir.path()) {
            Err(StoreError::Damaged { detail, .. }) => assert!(
                (detail.contains(&format!("generation {generation}"))
                    && detail.contains("writes were lost"))
                    || detail.starts_with("sled cannot read it"),
                "{what}: {detail}"
            ),
            Err(e) => panic!("{what}: another error: {e}"),
            Ok(s) => panic!(
                "{what}: opened at generation {} as if nothing happened",
                s.generation().unwrap()
            ),
        }
    }
}

#[test]
fn a_snapshot_restores_every_tree_and_the_old_store_is_moved_aside() {
    let dir = tempfile::tempdir().unwrap();
    let store = filled(dir.path(), 2);
    store
        .ledger_append(
            "https://ca/dir",
            &haproxy_acme_state::ledger::Entry::Order { at: 5 },
            0,
        )
        .unwrap();
    let bytes = store.export(1_700_000_000).unwrap();
    let snap = snapshot::parse(&bytes).unwrap();
    assert!(
        snap.summary()
            .starts_with("2 certificate records, 3 keys, 1 ACME accounts (store generation 5"),
        "{}",
        snap.summary()
    );
    drop(store);
    let aside = SledStore::move_aside(dir.path(), "replaced", 1_700_000_000)
        .unwrap()
        .unwrap();
    assert!(aside.join(STORE_DIR).join("db").exists());
    assert!(aside.join(marker::FILE).exists());
    SledStore::restore(dir.path(), &snap).unwrap();
    let restored = reopen_sled(dir.path());
    assert!(restored.unmarked() && !marker::path(dir.path()).exists());
    let again = restored.with_inner(|i| i.export(1_700_000_000)).unwrap();
    assert_eq!(again, bytes, "every tree, byte for byte");
    assert_eq!(
        restored
            .with_inner(|i| i.certificate("s1.test"))
            .unwrap()
            .unwrap()
            .1,
        format!("KEY 1 {}", "k".repeat(200))
    );
    assert!(
        SledStore::restore(dir.path(), &snap).is_err(),
        "never over a store"
    );
    // Sealed (by the daemon, once checked), its marker has the snapshot's generation.
    restored.with_inner(|i| i.seal()).unwrap();
    drop(restored);
    assert_eq!(
        marker::read(dir.path()).unwrap().map(|m| m.generation),
        Some(5)
    );
    assert_eq!(reopen(dir.path()).unwrap().generation().unwrap(), 5);
}

#[test]
fn truncated_damaged_and_foreign_snapshots_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = filled(dir.path(), 2).export(1).unwrap();
    let text = String::from_utf8(bytes.clone()).unwrap();
    let refused = |b: &[u8]| snapshot::parse(b).unwrap_err();
    assert!(refused(b"").contains("not a haproxy-acme snapshot"));
    assert!(refused(b"{\"hello\":1}\n").contains("not a haproxy-acme snapshot"));
    assert!(refused(RECORD_V1.as_bytes()).contains("not a haproxy-acme snapshot"));
    assert!(refused(&bytes[..bytes.len() / 2]).contains("truncated"));
    assert!(refused(&bytes[..bytes.len() - 1]).contains("truncated"));
    // One character changed in the middle (a key's base64).
    let mut flipped = bytes.clone();
    let i = bytes.len() / 2;
    flipped[i] = if flipped[i] == b'A' { b'B' } else { b'A' };
    assert!(refused(&flipped).contains("damaged"));
    let newer = text.replacen("\"version\":1", "\"version\":2", 1);
    assert!(refused(newer.as_bytes()).contains("format 2"));
    // A lost line: the checksum no longer matches.
    let lines: Vec<&str> = text.lines().collect();
    let dropped = format!("{}\n{}\n", lines[0], lines[2..].join("\n"));
    assert!(refused(dropped.as_bytes()).contains("damaged"));
}

#[test]
fn in_use_sees_the_lock_of_an_open_store() {
    let dir = tempfile::tempdir().unwrap();
    assert!(!SledStore::in_use(dir.path()).unwrap(), "no store at all");
    let store = Inner::open(dir.path()).unwrap();
    // sled's lock is flock(2): per open file description, so this process sees it too.
    assert!(SledStore::in_use(dir.path()).unwrap());
    drop(store);
    // sled's threads let go of the file a moment after the handle is dropped.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while SledStore::in_use(dir.path()).unwrap() {
        assert!(std::time::Instant::now() < deadline, "still locked");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn a_store_without_a_marker_gets_none_until_it_is_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Inner::open(dir.path()).unwrap();
    store
        .put(&Record::new(vec!["a.test".into()], KeyType::EcdsaP256, 1))
        .unwrap();
    drop(store);
    // A command (or a refused start) on a wiped DATA_DIR must not make it look trusted.
    let store = reopen_sled(dir.path());
    assert!(store.unmarked() && !marker::path(dir.path()).exists());
    store.with_inner(|i| i.seal()).unwrap();
    assert_eq!(
        marker::read(dir.path()).unwrap().map(|m| m.generation),
        Some(1)
    );
    store
        .with_inner(|i| i.put(&Record::new(vec!["b.test".into()], KeyType::EcdsaP256, 1)))
        .unwrap();
    assert_eq!(
        marker::read(dir.path()).unwrap().map(|m| m.generation),
        Some(2),
        "sealed: every generation reaches the marker"
    );
    drop(store);
    assert!(!reopen_sled(dir.path()).unmarked());
}

/// A pass over 10,000 records or more makes the daemon's store open again (dropping the pages
/// the pass read): everything stays readable, and writes made while it reopens are kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_over_many_records_reopens_the_store_and_loses_nothing() {
    use crate::store::{Change, Store};
    let dir = tempfile::tempdir().unwrap();
    let sled = std::sync::Arc::new(SledStore::open(dir.path()).unwrap());
    sled.shed_pages();
    let store: std::sync::Arc<dyn Store> = sled.clone();
    let n = 10_050;
    let records = (0..n)
        .map(|i| Record::new(vec![format!("r{i}.test")], KeyType::EcdsaP256, i))
        .collect();
    store.put_all(records).await.unwrap();
    for round in 0..3 {
        let all = store.records().await.unwrap();
        assert_eq!(all.len(), n as usize + round);
        // Written while the reopen the pass started may be under way.
        let id = format!("after{round}.test");
        let r = Record::new(vec![id.clone()], KeyType::EcdsaP256, 7);
        store
            .update(&id, move |_| (Change::Put(r), ()))
            .await
            .unwrap();
        assert!(store.get(&id).await.unwrap().is_some());
        assert!(store.get("r10049.test").await.unwrap().is_some());
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while sled.sheds() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} reopens",
            sled.sheds()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Opened again from the disk: every write is there.
    drop((store, sled));
    // The reopen the last pass started holds the store's lock until it is done.
    let store: std::sync::Arc<dyn Store> = std::sync::Arc::new(
        tokio::task::block_in_place(|| {
            when_unlocked(std::time::Duration::from_secs(30), || {
                SledStore::open(dir.path())
            })
        })
        .unwrap(),
    );
    assert_eq!(store.records().await.unwrap().len(), n as usize + 3);
}

/// Some records updated at once: each passed to the closure (an id not stored as `None`), what
/// it returns written in one batch, and there after the store is opened again.
#[tokio::test]
async fn some_records_are_updated_in_one_batch_and_kept() {
    use crate::store::Store;
    let dir = tempfile::tempdir().unwrap();
    let r = |id: &str| Record::new(vec![id.into()], KeyType::EcdsaP256, 1);
    {
        let store: std::sync::Arc<dyn Store> =
            std::sync::Arc::new(SledStore::open(dir.path()).unwrap());
        store.put_all(vec![r("a.test"), r("b.test")]).await.unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let saw = seen.clone();
        let ids = ["a.test", "new.test", "b.test"].map(String::from).to_vec();
        store
            .update_some(
                ids,
                Box::new(move |id, old| {
                    saw.lock().unwrap().push((id.to_string(), old.is_some()));
                    match id {
                        "a.test" => old.map(|o| Record {
                            unconfigured: true,
                            ..o.clone()
                        }),
                        "new.test" => Some(r("new.test")),
                        _ => None,
                    }
                }),
            )
            .await
            .unwrap();
        let mut seen = seen.lock().unwrap().clone();
        seen.sort();
        let expected = [("a.test", true), ("b.test", true), ("new.test", false)];
        assert_eq!(seen, expected.map(|(i, s)| (i.to_string(), s)).to_vec());
    }
    let store = reopen_sled(dir.path());
    assert!(store.get("a.test").await.unwrap().unwrap().unconfigured);
    assert_eq!(store.get("b.test").await.unwrap().unwrap(), r("b.test"));
    assert_eq!(store.get("new.test").await.unwrap().unwrap(), r("new.test"));
}
