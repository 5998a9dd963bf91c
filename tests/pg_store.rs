//! The PostgreSQL store (issue 15) against a real, private PostgreSQL (tests/common/pg.rs),
//! through the `Store` trait as the daemon uses it: records with their keys and certificates,
//! the ledger, the runtime additions and accounts; concurrent updates from two instances; keys
//! sealed at rest and a wrong STORE_KEY_FILE refused; a role with table rights only; the
//! lease's fencing of a former leader (a takeover waits for its write in flight);
//! notifications between instances across a crash of the server; the sled-to-PostgreSQL
//! migration, as a function and as the `migrate-store` command. Fails when PostgreSQL is not
//! installed; never skips.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pg::Postgres;
use haproxy_acme::store::migrate;
use haproxy_acme::store::postgres::listen::Notice;
use haproxy_acme::store::postgres::seal::SealKey;
use haproxy_acme::store::postgres::PgStore;
use haproxy_acme::store::sled::SledStore;
use haproxy_acme::store::{Change, Store, StoreError};
use haproxy_acme_state::ledger::Entry;
use haproxy_acme_state::{apply, CertMeta, Event, KeyType, Record};
use tokio::sync::mpsc::UnboundedReceiver;

const NOW: i64 = 1_790_000_000;
const DIRECTORY: &str = "https://ca.test/directory";

/// A key file of 64 hex digits (`openssl rand -hex 32`'s form) made of `byte`.
fn key_file(dir: &Path, name: &str, byte: u8) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{}\n", format!("{byte:02x}").repeat(32))).unwrap();
    path
}

async fn connect(pg: &Postgres, key: &Path, node: &str) -> Result<PgStore, StoreError> {
    PgStore::connect(&pg.url(), SealKey::from_file(key).unwrap(), node).await
}

/// A fresh configured record of `id` (and www.`id`).
fn record(id: &str) -> Record {
    Record::new(
        vec![id.to_string(), format!("www.{id}")],
        KeyType::EcdsaP256,
        NOW,
    )
}

/// A record with an order in flight whose key is generated.
fn ordering(id: &str) -> Record {
    let r = apply(
        &record(id),
        Event::OrderCreated {
            url: format!("https://ca.test/order/{id}"),
        },
        NOW,
    );
    apply(&r, Event::KeyStored, NOW)
}

/// A real key (PKCS#8 PEM) and a self-signed chain for `id`, as the daemon stores them.
fn key_and_chain(id: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![id.to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (key.serialize_pem(), cert.pem())
}

fn issued(r: &Record, serial: &str) -> Record {
    let meta = CertMeta {
        serial: serial.into(),
        not_before: NOW,
        not_after: NOW + 90 * 86_400,
        fingerprint: format!("{serial:0>64}"),
        issued_at: NOW,
    };
    apply(r, Event::CertificateStored { meta }, NOW)
}

async fn put(store: &dyn Store, change: Change) -> Result<(), StoreError> {
    let id = match &change {
        Change::Put(r)
        | Change::PutObservation(r)
        | Change::PutWithPendingKey(r, _)
        | Change::PutCertificate(r, _) => r.id.clone(),
        Change::PutAdopted { record, .. } => record.id.clone(),
        Change::Keep | Change::Delete => unreachable!("put of a record"),
    };
    store.update(&id, move |_| (change, ())).await
}

/// The next notice within `secs` seconds.
async fn next(rx: &mut UnboundedReceiver<Notice>, secs: u64) -> Notice {
    tokio::time::timeout(Duration::from_secs(secs), rx.recv())
        .await
        .unwrap_or_else(|_| panic!("no notice within {secs} s"))
        .expect("the listener ended")
}

/// The rows of a table as text, secrets as `encode(..., 'escape')` (printable bytes as they are)
/// and as hex.
fn rows(pg: &Postgres, table: &str, sealed: &str) -> (String, String) {
    let escaped = pg.psql(&format!(
        "SELECT encode({sealed}, 'escape') FROM haproxy_acme.{table}"
    ));
    let hex = pg.psql(&format!(
        "SELECT encode({sealed}, 'hex') FROM haproxy_acme.{table}"
    ));
    (escaped, hex)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_keys_ledger_added_and_accounts_round_trip() {
    let t = Instant::now();
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), "store.key", 7);
    let pg_store = connect(&pg, &key, "n1").await.unwrap();
    let store: &dyn Store = &pg_store;
    // What the server says comes through (not only tokio-postgres's "db error").
    let nowhere = PgStore::connect(
        &format!("postgres://postgres@127.0.0.1:{}/nosuchdb", pg.port()),
        SealKey::from_file(&key).unwrap(),
        "n1",
    )
    .await;
    match nowhere {
        Err(StoreError::Database(m)) => {
            assert!(m.contains("database \"nosuchdb\" does not exist"), "{m}")
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("connected to a database that does not exist"),
    }

    // A record round trip.
    assert_eq!(store.get("a.test").await.unwrap(), None);
    let a = record("a.test");
    put(store, Change::Put(a.clone())).await.unwrap();
    assert_eq!(store.get("a.test").await.unwrap(), Some(a.clone()));

    // A certificate without a pending key is refused and nothing is written.
    let b = ordering("b.test");
    let (b_key, b_chain) = key_and_chain("b.test");
    let refused = put(
        store,
        Change::PutCertificate(issued(&b, "0B"), b_chain.clone()),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&refused, StoreError::Write(m) if m.contains("without its key")),
        "{refused}"
    );
    assert_eq!(store.get("b.test").await.unwrap(), None);
    assert_eq!(store.certificate("b.test").await.unwrap(), None);
    assert_eq!(
        pg.psql("SELECT count(*) FROM haproxy_acme.certificates"),
        "0"
    );

    // The pending key, then the certificate: the key moves to the certificate.
    put(store, Change::PutWithPendingKey(b.clone(), b_key.clone()))
        .await
        .unwrap();
    assert_eq!(store.get("b.test").await.unwrap(), Some(b.clone()));
    assert_eq!(
        store.pending_key("b.test").await.unwrap().as_deref(),
        Some(b_key.as_str())
    );
    assert_eq!(store.certificate("b.test").await.unwrap(), None);
    let b_issued = issued(&b, "0B");
    put(
        store,
        Change::PutCertificate(b_issued.clone(), b_chain.clone()),
    )
    .await
    .unwrap();
    assert_eq!(store.get("b.test").await.unwrap(), Some(b_issued.clone()));
    assert_eq!(
        store.certificate("b.test").await.unwrap(),
        Some((b_chain.clone(), b_key.clone()))
    );
    assert_eq!(store.pending_key("b.test").await.unwrap(), None);

    // The closure sees the stored record and its answer comes back; Keep writes nothing.
    let seen = store
        .update("b.test", |r| {
            (Change::Keep, r.map(|r| r.cert.unwrap().serial))
        })
        .await
        .unwrap();
    assert_eq!(seen.as_deref(), Some("0B"));

    // Delete forgets record, certificate and key.
    store
        .update("b.test", |_| (Change::Delete, ()))
        .await
        .unwrap();
    assert_eq!(store.get("b.test").await.unwrap(), None);
    assert_eq!(store.certificate("b.test").await.unwrap(), None);
    for table in ["records", "certificates", "pending_keys"] {
        assert_eq!(
            pg.psql(&format!(
                "SELECT count(*) FROM haproxy_acme.{table} WHERE id = 'b.test'"
            )),
            "0",
            "{table}"
        );
    }

    // update_all: the sweep sees every record in id order, replaces some, and new ones come in.
    put(store, Change::Put(record("c.test"))).await.unwrap();
    let swept = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen_ids = swept.clone();
    store
        .update_all(
            Box::new(move |r| {
                seen_ids.lock().unwrap().push(r.id.clone());
                (r.id == "c.test").then(|| {
                    let mut r = r.clone();
                    r.unconfigured = true;
                    r
                })
            }),
            Box::new(|| vec![record("d.test")]),
        )
        .await
        .unwrap();
    assert_eq!(*swept.lock().unwrap(), vec!["a.test", "c.test"]);
    let all = store.records().await.unwrap();
    let ids: Vec<&str> = all.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, vec!["a.test", "c.test", "d.test"]);
    assert_eq!(all[0], a);
    assert!(all[1].unconfigured);
    assert_eq!(all[2], record("d.test"));

    // The runtime additions: changed under their lock, a refusal changes nothing.
    assert!(store.added().await.unwrap().is_empty());
    let one = vec!["e.test".to_string(), "www.e.test".to_string()];
    let list = one.clone();
    let written = store
        .update_added(Box::new(move |old| {
            let mut new = old.to_vec();
            new.push(list);
            Ok(new)
        }))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(written, vec![one.clone()]);
    let refused = store
        .update_added(Box::new(|_| Err("e.test is already there".into())))
        .await
        .unwrap();
    assert_eq!(refused, Err("e.test is already there".to_string()));
    assert_eq!(store.added().await.unwrap(), vec![one]);

    // The ledger: per directory, oldest first, `since` inclusive, pruned by keep_since.
    let other = "https://other.test/directory";
    for at in [NOW + 300, NOW + 100] {
        store
            .ledger_append(DIRECTORY, &Entry::Order { at }, 0)
            .await
            .unwrap();
    }
    let cert_entry = Entry::Certificate {
        at: NOW + 200,
        names: vec!["a.test".into()],
        registered_domains: vec!["a.test".into()],
    };
    store
        .ledger_append(DIRECTORY, &cert_entry, 0)
        .await
        .unwrap();
    store
        .ledger_append(other, &Entry::Order { at: NOW }, 0)
        .await
        .unwrap();
    assert_eq!(
        store.ledger_since(DIRECTORY, 0).await.unwrap(),
        vec![
            Entry::Order { at: NOW + 100 },
            cert_entry.clone(),
            Entry::Order { at: NOW + 300 }
        ]
    );
    assert_eq!(
        store.ledger_since(DIRECTORY, NOW + 200).await.unwrap(),
        vec![cert_entry.clone(), Entry::Order { at: NOW + 300 }]
    );
    store
        .ledger_append(
            DIRECTORY,
            &Entry::FailedValidation {
                at: NOW + 400,
                name: "a.test".into(),
            },
            NOW + 200,
        )
        .await
        .unwrap();
    let left = store.ledger_since(DIRECTORY, i64::MIN).await.unwrap();
    assert_eq!(left.len(), 3, "{left:?}");
    assert_eq!(left[0], cert_entry);
    assert_eq!(
        store.ledger_since(other, i64::MIN).await.unwrap(),
        vec![Entry::Order { at: NOW }],
        "another directory's ledger is not pruned"
    );

    // Accounts and their keys, per directory.
    assert_eq!(store.account(DIRECTORY).await.unwrap(), None);
    assert_eq!(store.account_key(DIRECTORY).await.unwrap(), None);
    store
        .put_account_key(DIRECTORY, b"\x30\x81\x87 pkcs8")
        .await
        .unwrap();
    store
        .put_account(DIRECTORY, br#"{"id":"https://ca.test/acct/1"}"#)
        .await
        .unwrap();
    store
        .put_account(DIRECTORY, br#"{"id":"https://ca.test/acct/2"}"#)
        .await
        .unwrap();
    assert_eq!(
        store.account(DIRECTORY).await.unwrap().as_deref(),
        Some(&br#"{"id":"https://ca.test/acct/2"}"#[..])
    );
    assert_eq!(
        store.account_key(DIRECTORY).await.unwrap().as_deref(),
        Some(&b"\x30\x81\x87 pkcs8"[..])
    );
    assert_eq!(store.account(other).await.unwrap(), None);
    assert_eq!(
        pg_store.account_directories().await.unwrap(),
        vec![DIRECTORY]
    );

    // A second instance reads all of it.
    let second = connect(&pg, &key, "n2").await.unwrap();
    let second: &dyn Store = &second;
    assert_eq!(second.records().await.unwrap(), all);
    assert_eq!(
        second.account(DIRECTORY).await.unwrap(),
        store.account(DIRECTORY).await.unwrap()
    );
    println!("round trip: {:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_from_two_instances_lose_nothing() {
    let t = Instant::now();
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), "store.key", 7);
    let a: Arc<dyn Store> = Arc::new(connect(&pg, &key, "a").await.unwrap());
    let b: Arc<dyn Store> = Arc::new(connect(&pg, &key, "b").await.unwrap());
    put(a.as_ref(), Change::Put(record("count.test")))
        .await
        .unwrap();
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                store
                    .update("count.test", move |r| {
                        let mut r = r.expect("the record is there");
                        // renew_at as a counter, names as the list of writers.
                        let n = r.renew_at.unwrap_or(0);
                        r.renew_at = Some(n + 1);
                        r.names.push(format!("w{i}.count.test"));
                        (Change::Put(r), n)
                    })
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut seen = Vec::new();
    for task in tasks {
        seen.push(task.await.unwrap());
    }
    seen.sort();
    assert_eq!(
        seen,
        (0..20).collect::<Vec<i64>>(),
        "every update saw the one before"
    );
    let r = b.get("count.test").await.unwrap().unwrap();
    assert_eq!(r.renew_at, Some(20));
    assert_eq!(r.names.len(), 22);
    for i in 0..20 {
        assert!(r.names.contains(&format!("w{i}.count.test")), "w{i} lost");
    }
    println!("20 concurrent updates: {:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_sealed_at_rest_and_a_wrong_key_is_refused() {
    let t = Instant::now();
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), "store.key", 7);
    let wrong = key_file(dir.path(), "wrong.key", 8);
    let pg_store = connect(&pg, &key, "n1").await.unwrap();
    let store: &dyn Store = &pg_store;

    let (issued_key, chain) = key_and_chain("a.test");
    let a = ordering("a.test");
    put(
        store,
        Change::PutWithPendingKey(a.clone(), issued_key.clone()),
    )
    .await
    .unwrap();
    put(
        store,
        Change::PutCertificate(issued(&a, "0A"), chain.clone()),
    )
    .await
    .unwrap();
    let (pending_key, _) = key_and_chain("b.test");
    put(
        store,
        Change::PutWithPendingKey(ordering("b.test"), pending_key.clone()),
    )
    .await
    .unwrap();
    let account_key = rcgen::KeyPair::generate().unwrap().serialize_der();
    let credentials = br#"{"id":"https://ca.test/acct/77","key_pkcs8":"c2VjcmV0"}"#;
    store
        .put_account_key(DIRECTORY, &account_key)
        .await
        .unwrap();
    store.put_account(DIRECTORY, credentials).await.unwrap();

    let body = |pem: &str| -> String {
        pem.lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<String>()
    };
    for (table, column, secret) in [
        ("certificates", "key_sealed", issued_key.as_bytes()),
        ("pending_keys", "key_sealed", pending_key.as_bytes()),
        ("accounts", "credentials_sealed", &credentials[..]),
        ("account_keys", "key_sealed", &account_key[..]),
    ] {
        let (escaped, hexed) = rows(&pg, table, column);
        assert_eq!(hexed.lines().count(), 1, "{table}: {hexed}");
        assert!(
            hexed.starts_with(&hex(b"hae1")),
            "{table}: sealed values start with the format"
        );
        assert!(!escaped.contains("PRIVATE KEY"), "{table}: {escaped}");
        assert!(!escaped.contains("BEGIN"), "{table}: {escaped}");
        assert!(!hexed.contains(&hex(&secret[..16])), "{table}");
        assert!(
            !hexed.contains(&hex(&secret[secret.len() - 16..])),
            "{table}"
        );
    }
    let (escaped, _) = rows(&pg, "accounts", "credentials_sealed");
    assert!(!escaped.contains("acct/77") && !escaped.contains("c2VjcmV0"));
    let (escaped, _) = rows(&pg, "certificates", "key_sealed");
    assert!(!escaped.contains(&body(&issued_key)[..20]));
    // The whole database as text: no key anywhere (records and chains are not secret).
    let everything = pg.psql(
        "SELECT string_agg(t::text, E'\\n') FROM (SELECT row_to_json(r)::text AS t FROM \
         haproxy_acme.records r UNION ALL SELECT row_to_json(c)::text FROM \
         haproxy_acme.certificates c UNION ALL SELECT row_to_json(s)::text FROM \
         haproxy_acme.settings s) x",
    );
    assert!(!everything.contains("PRIVATE KEY"));
    assert!(
        everything.contains("BEGIN CERTIFICATE"),
        "the chain is there"
    );

    // A second instance with another key file is refused at start, naming the setting, and
    // changes nothing.
    let before = pg.psql(
        "SELECT string_agg(key || '=' || encode(value, 'hex'), ',' ORDER BY key) FROM \
         haproxy_acme.settings",
    );
    let counts = |pg: &Postgres| {
        pg.psql(
            "SELECT (SELECT count(*) FROM haproxy_acme.records) || ' ' || (SELECT count(*) \
             FROM haproxy_acme.certificates) || ' ' || (SELECT count(*) FROM \
             haproxy_acme.pending_keys) || ' ' || (SELECT string_agg(encode(key_sealed, 'hex'), \
             ',') FROM haproxy_acme.certificates)",
        )
    };
    let counts_before = counts(&pg);
    let e = match connect(&pg, &wrong, "n2").await {
        Ok(_) => panic!("a store written with another key was opened"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("STORE_KEY_FILE"), "{e}");
    assert!(e.contains("nothing was changed"), "{e}");
    assert_eq!(
        pg.psql(
            "SELECT string_agg(key || '=' || encode(value, 'hex'), ',' ORDER BY key) FROM \
             haproxy_acme.settings"
        ),
        before
    );
    assert_eq!(counts(&pg), counts_before);

    // The right key opens it, in another instance too.
    let again = connect(&pg, &key, "n3").await.unwrap();
    let again: &dyn Store = &again;
    assert_eq!(
        again.certificate("a.test").await.unwrap(),
        Some((chain, issued_key))
    );
    assert_eq!(
        again.pending_key("b.test").await.unwrap(),
        Some(pending_key)
    );
    assert_eq!(
        again.account_key(DIRECTORY).await.unwrap(),
        Some(account_key)
    );
    assert_eq!(
        again.account(DIRECTORY).await.unwrap().as_deref(),
        Some(&credentials[..])
    );

    // A sealed value moved into another row does not open (the row is the associated data).
    pg.psql(
        "UPDATE haproxy_acme.pending_keys SET key_sealed = (SELECT key_sealed FROM \
         haproxy_acme.certificates WHERE id = 'a.test') WHERE id = 'b.test'",
    );
    let e = again.pending_key("b.test").await.unwrap_err();
    assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
    println!("secrets at rest: {:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_former_leader_is_fenced_off_after_a_takeover() {
    let t = Instant::now();
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), "store.key", 7);
    let a = connect(&pg, &key, "node-a").await.unwrap();
    let b = connect(&pg, &key, "node-b").await.unwrap();
    let ttl = Duration::from_secs(2);

    let e1 = a.try_lead(ttl).await.unwrap().expect("nobody leads yet");
    assert_eq!(b.try_lead(ttl).await.unwrap(), None, "A's lease is live");
    let lease = a.lease().await.unwrap();
    assert_eq!(lease.holder.as_deref(), Some("node-a"));
    assert_eq!(lease.epoch, e1.epoch);
    assert!(lease.live);

    let a_fenced = a.fenced(e1.epoch);
    let a_fenced: &dyn Store = &a_fenced;
    let first = record("lead.test");
    put(a_fenced, Change::Put(first.clone())).await.unwrap();
    a_fenced
        .put_account(DIRECTORY, b"credentials of A")
        .await
        .unwrap();
    let renewed = a.renew_lead(e1, ttl).await.unwrap().expect("still A's");
    assert_eq!(renewed.epoch, e1.epoch);

    // A stops renewing (a pause, a partition): B takes over once the lease has run out.
    let deadline = Instant::now() + Duration::from_secs(10);
    let e2 = loop {
        if let Some(held) = b.try_lead(ttl).await.unwrap() {
            break held;
        }
        assert!(Instant::now() < deadline, "B never took the lease over");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(e2.epoch > e1.epoch, "{e2:?} after {e1:?}");
    assert_eq!(b.lease().await.unwrap().holder.as_deref(), Some("node-b"));

    // Every write of A's handle is refused now, and nothing of it is written.
    let mut changed = first.clone();
    changed.unconfigured = true;
    let e = put(a_fenced, Change::Put(changed.clone()))
        .await
        .unwrap_err();
    assert!(
        matches!(e, StoreError::Fenced { epoch } if epoch == e1.epoch),
        "{e}"
    );
    let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ran_in = ran.clone();
    let e = a_fenced
        .update("new.test", move |_| {
            ran_in.store(true, std::sync::atomic::Ordering::SeqCst);
            (Change::Put(record("new.test")), ())
        })
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Fenced { .. }), "{e}");
    assert!(
        !ran.load(std::sync::atomic::Ordering::SeqCst),
        "a fenced update does not even run"
    );
    let e = a_fenced
        .put_account(DIRECTORY, b"stale credentials")
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Fenced { .. }), "{e}");
    let e = a_fenced
        .update_all(Box::new(|_| None), Box::new(|| vec![record("x.test")]))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Fenced { .. }), "{e}");
    assert!(e.to_string().contains("taken over"), "{e}");
    let b_store: &dyn Store = &b;
    assert_eq!(b_store.get("lead.test").await.unwrap(), Some(first));
    assert_eq!(b_store.get("new.test").await.unwrap(), None);
    assert_eq!(b_store.get("x.test").await.unwrap(), None);
    assert_eq!(
        b_store.account(DIRECTORY).await.unwrap().as_deref(),
        Some(&b"credentials of A"[..])
    );
    assert_eq!(a.renew_lead(e1, ttl).await.unwrap(), None, "A lost it");

    // The new leader's handle writes.
    let b_fenced = b.fenced(e2.epoch);
    put(&b_fenced as &dyn Store, Change::Put(changed.clone()))
        .await
        .unwrap();
    assert_eq!(b_store.get("lead.test").await.unwrap(), Some(changed));

    // A released lease is taken at once, with a higher epoch again.
    b.release_lead(e2).await.unwrap();
    let e3 = a.try_lead(ttl).await.unwrap().expect("released");
    assert!(e3.epoch > e2.epoch);
    println!("fencing: {:?}", t.elapsed());
}

/// A role that may only read and write the tables (the schema laid out by its owner, as a
/// database administrator sets it up) runs an instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_without_create_rights_uses_a_laid_out_store() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), "store.key", 7);
    let owner = connect(&pg, &key, "owner").await.unwrap();
    put(&owner as &dyn Store, Change::Put(record("a.test")))
        .await
        .unwrap();
    pg.psql(
        "CREATE ROLE app LOGIN; GRANT USAGE ON SCHEMA haproxy_acme TO app; \
         GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA haproxy_acme TO app; \
         GRANT USAGE ON ALL SEQUENCES IN SCHEMA haproxy_acme TO app",
    );
    let url = format!("postgres://app@127.0.0.1:{}/postgres", pg.port());
    let app = PgStore::connect(&url, SealKey::from_file(&key).unwrap(), "app")
        .await
        .unwrap();
    let app: &dyn Store = &app;
    assert_eq!(app.get("a.test").await.unwrap(), Some(record("a.test")));
    put(app, Change::Put(record("b.test"))).await.unwrap();
    app.ledger_append(DIRECTORY, &Entry::Order { at: NOW }, 0)
        .await
        .unwrap();
    // A wrong key is still refused for it.
    let wrong = key_file(dir.path(), "wrong.key", 8);
    let e = PgStore::connect(&url, SealKey::from_file(&wrong).unwrap(), "app")
        .await
        .err()
        .expect("a wrong key");
    assert!(e.to_string().contains("STORE_KEY_FILE"), "{e}");
}

/// The fencing check holds the lease row (`FOR SHARE`) until the write commits: a takeover
/// waits for a write of the former leader already in flight, so none commits after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_waits_for_the_former_leaders_write_in_flight() {
    let t = Instant::now();
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), "store.key", 7);
    let a = connect(&pg, &key, "node-a").await.unwrap();
    let b = connect(&pg, &key, "node-b").await.unwrap();
    let ttl = Duration::from_secs(30);
    let e1 = a.try_lead(ttl).await.unwrap().unwrap();
    let a_fenced: Arc<dyn Store> = Arc::new(a.fenced(e1.epoch));
    put(a_fenced.as_ref(), Change::Put(record("slow.test")))
        .await
        .unwrap();
    // A stalls (a long pause) just past the lease's end: here, the lease is ended by hand.
    pg.psql("UPDATE haproxy_acme.lease SET expires_at = now() - interval '1 second'");
    let (checked_tx, checked) = tokio::sync::oneshot::channel();
    let slow = tokio::spawn({
        let a_fenced = a_fenced.clone();
        async move {
            a_fenced
                .update("slow.test", move |r| {
                    let _ = checked_tx.send(());
                    std::thread::sleep(Duration::from_millis(1500));
                    let mut r = r.unwrap();
                    r.names.push("written.slow.test".into());
                    (Change::Put(r), ())
                })
                .await
        }
    });
    checked.await.unwrap();
    let asked = Instant::now();
    let e2 = b.try_lead(ttl).await.unwrap().expect("the lease had ended");
    let waited = asked.elapsed();
    slow.await.unwrap().unwrap();
    assert!(e2.epoch > e1.epoch);
    assert!(
        waited >= Duration::from_millis(1000),
        "the takeover waited {waited:?} for the write in flight"
    );
    let r = (&b as &dyn Store).get("slow.test").await.unwrap().unwrap();
    assert!(r.names.contains(&"written.slow.test".to_string()));
    // The next one is refused.
    let e = put(a_fenced.as_ref(), Change::Put(record("slow.test")))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Fenced { .. }), "{e}");
    assert_eq!((&b as &dyn Store).get("slow.test").await.unwrap(), Some(r));
    println!(
        "takeover during a write: waited {waited:?}, {:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_reach_the_other_instance_across_a_server_crash() {
    let t = Instant::now();
    let mut pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), "store.key", 7);
    let a = connect(&pg, &key, "node-a").await.unwrap();
    let b = connect(&pg, &key, "node-b").await.unwrap();
    let (sa, sb): (&dyn Store, &dyn Store) = (&a, &b);
    let mut rx = b.listen();
    // Another instance of the same node name (in this process, this second) is another
    // instance: B hears its writes.
    let twin = connect(&pg, &key, "node-b").await.unwrap();
    assert_ne!(twin.instance(), b.instance());
    // The first notice says the listener is in place: whatever was written before it is read
    // by a catch-up.
    assert_eq!(next(&mut rx, 10).await, Notice::CatchUp);
    put(&twin as &dyn Store, Change::Put(record("twin.test")))
        .await
        .unwrap();
    assert_eq!(next(&mut rx, 10).await, Notice::Record("twin.test".into()));

    // B's own write is not announced to B; A's is.
    put(sb, Change::Put(record("own.test"))).await.unwrap();
    put(sa, Change::Put(record("a1.test"))).await.unwrap();
    assert_eq!(next(&mut rx, 10).await, Notice::Record("a1.test".into()));
    sa.update("a1.test", |_| (Change::Delete, ()))
        .await
        .unwrap();
    assert_eq!(next(&mut rx, 10).await, Notice::Record("a1.test".into()));
    sa.update_added(Box::new(|_| Ok(vec![vec!["z.test".to_string()]])))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next(&mut rx, 10).await, Notice::Added);
    sa.put_all(vec![record("m1.test"), record("m2.test")])
        .await
        .unwrap();
    assert_eq!(next(&mut rx, 10).await, Notice::CatchUp);
    // A write that is not committed is not announced.
    put(sb, Change::Put(record("own2.test"))).await.unwrap();
    sa.update("b.test", |_| (Change::Keep, ())).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), rx.recv())
            .await
            .is_err(),
        "nothing for B's own writes or a Keep"
    );

    // The server crashes: calls fail as database errors, nothing else.
    tokio::task::block_in_place(|| pg.kill());
    let e = sa.get("m1.test").await.unwrap_err();
    assert!(matches!(e, StoreError::Database(_)), "{e}");
    let e = put(sa, Change::Put(record("down.test"))).await.unwrap_err();
    assert!(matches!(e, StoreError::Database(_)), "{e}");
    let e = sb.records().await.unwrap_err();
    assert!(matches!(e, StoreError::Database(_)), "{e}");
    assert!(matches!(
        a.try_lead(Duration::from_secs(2)).await,
        Err(StoreError::Database(_))
    ));
    match connect(&pg, &key, "node-c").await {
        Err(StoreError::Database(m)) => assert!(
            m.contains("error connecting to server") && m.contains("refused"),
            "{m}"
        ),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("connected to a server that is down"),
    }

    // It is back: the listener says it may have missed notices, and later ones arrive.
    tokio::task::block_in_place(|| pg.start_again());
    let t_back = Instant::now();
    assert_eq!(next(&mut rx, 30).await, Notice::CatchUp);
    println!("listener back after {:?}", t_back.elapsed());
    put(sa, Change::Put(record("after.test"))).await.unwrap();
    assert_eq!(next(&mut rx, 10).await, Notice::Record("after.test".into()));
    // Both pools reconnected: every call works again.
    assert_eq!(sb.get("down.test").await.unwrap(), None);
    assert_eq!(
        sb.records()
            .await
            .unwrap()
            .iter()
            .map(|r| r.id.as_str())
            .collect::<Vec<_>>(),
        vec![
            "after.test",
            "m1.test",
            "m2.test",
            "own.test",
            "own2.test",
            "twin.test"
        ]
    );
    assert!(a.try_lead(Duration::from_secs(2)).await.unwrap().is_some());
    println!("notifications: {:?}", t.elapsed());
}

/// A sled store in `data_dir` as a daemon leaves it: an issued certificate with its key, an
/// order in flight with its key, a plain record, an account and its key, ledger entries, a
/// runtime addition.
async fn seed_sled(data_dir: &Path) -> SledStore {
    let sled = SledStore::open(data_dir).unwrap();
    sled.seal().await.unwrap();
    let store: &dyn Store = &sled;
    let a = ordering("a.test");
    let (a_key, a_chain) = key_and_chain("a.test");
    put(store, Change::PutWithPendingKey(a.clone(), a_key))
        .await
        .unwrap();
    let a = issued(&a, "0A");
    put(store, Change::PutCertificate(a.clone(), a_chain))
        .await
        .unwrap();
    // Its renewal is in flight: a new key beside the certificate.
    let renewal = apply(
        &a,
        Event::OrderCreated {
            url: "https://ca.test/order/a2".into(),
        },
        NOW,
    );
    let (a_next_key, _) = key_and_chain("a.test");
    put(
        store,
        Change::PutWithPendingKey(apply(&renewal, Event::KeyStored, NOW), a_next_key),
    )
    .await
    .unwrap();
    let (b_key, _) = key_and_chain("b.test");
    put(store, Change::PutWithPendingKey(ordering("b.test"), b_key))
        .await
        .unwrap();
    put(store, Change::Put(record("c.test"))).await.unwrap();
    store
        .put_account_key(
            DIRECTORY,
            &rcgen::KeyPair::generate().unwrap().serialize_der(),
        )
        .await
        .unwrap();
    store
        .put_account(DIRECTORY, br#"{"id":"https://ca.test/acct/1"}"#)
        .await
        .unwrap();
    for entry in [
        Entry::Order { at: NOW + 20 },
        Entry::Order { at: NOW + 10 },
        Entry::FailedValidation {
            at: NOW + 10,
            name: "b.test".into(),
        },
    ] {
        store.ledger_append(DIRECTORY, &entry, 0).await.unwrap();
    }
    store
        .update_added(Box::new(|_| Ok(vec![vec!["c.test".to_string()]])))
        .await
        .unwrap()
        .unwrap();
    sled
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_copies_everything_once() {
    let t = Instant::now();
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), "store.key", 7);
    let data = dir.path().join("data");
    let sled = seed_sled(&data).await;
    let target = connect(&pg, &key, "n1").await.unwrap();
    let copied = migrate::sled_to_postgres(&sled, &target).await.unwrap();
    assert_eq!(
        copied,
        migrate::Copied {
            records: 3,
            certificates: 1,
            pending_keys: 2,
            accounts: 1,
            ledger_entries: 3,
            added: 1,
        }
    );
    let directories = sled.directories().await.unwrap();
    assert_eq!(directories, vec![DIRECTORY]);
    migrate::compare(&sled, &target, &directories)
        .await
        .unwrap();
    assert_eq!(pg.psql("SELECT count(*) FROM haproxy_acme.records"), "3");
    assert_eq!(
        pg.psql("SELECT string_agg(id, ',' ORDER BY id) FROM haproxy_acme.pending_keys"),
        "a.test,b.test"
    );
    let copy: &dyn Store = &target;
    assert_eq!(
        copy.pending_key("a.test").await.unwrap(),
        (&sled as &dyn Store).pending_key("a.test").await.unwrap()
    );
    assert_ne!(
        copy.pending_key("a.test").await.unwrap().unwrap(),
        copy.certificate("a.test").await.unwrap().unwrap().1,
        "the renewal's key is not the certificate's"
    );

    // Into a store that holds something: refused, nothing written.
    let before = pg.psql("SELECT count(*) FROM haproxy_acme.ledger");
    let e = migrate::sled_to_postgres(&sled, &target).await.unwrap_err();
    assert!(e.contains("empty"), "{e}");
    assert_eq!(pg.psql("SELECT count(*) FROM haproxy_acme.ledger"), before);

    // A target holding only a ledger entry is not empty either (a copy would double it).
    let pg2 = Postgres::start();
    let only_ledger = connect(&pg2, &key, "n1").await.unwrap();
    (&only_ledger as &dyn Store)
        .ledger_append(DIRECTORY, &Entry::Order { at: NOW }, 0)
        .await
        .unwrap();
    let e = migrate::sled_to_postgres(&sled, &only_ledger)
        .await
        .unwrap_err();
    assert!(e.contains("empty"), "{e}");
    assert_eq!(pg2.psql("SELECT count(*) FROM haproxy_acme.ledger"), "1");
    assert_eq!(pg2.psql("SELECT count(*) FROM haproxy_acme.records"), "0");

    // compare finds a difference.
    let s: &dyn Store = &target;
    s.update("c.test", |r| {
        let mut r = r.unwrap();
        r.unconfigured = true;
        (Change::Put(r), ())
    })
    .await
    .unwrap();
    let e = migrate::compare(&sled, &target, &directories)
        .await
        .unwrap_err();
    assert!(e.contains("records differ"), "{e}");
    println!("migration: {:?}", t.elapsed());
}

fn migrate_store(data_dir: &Path, settings: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = std::process::Command::new(common::BIN);
    cmd.arg("migrate-store")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("DATA_DIR", data_dir)
        .env("RUST_LOG", "warn");
    for (k, v) in settings {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_store_command() {
    let t = Instant::now();
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), "store.key", 7);
    let data = dir.path().join("data");
    let url = pg.url();
    let settings = [
        ("POSTGRES_URL", url.as_str()),
        ("STORE_KEY_FILE", key.to_str().unwrap()),
        ("NODE_NAME", "migrator"),
    ];

    // Without POSTGRES_URL: a clear refusal.
    let out = migrate_store(&data, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", common::text(&out));
    assert!(
        common::text(&out).contains("POSTGRES_URL"),
        "{}",
        common::text(&out)
    );
    // No store in DATA_DIR: refused, and none is created.
    let out = migrate_store(&data, &settings);
    assert_eq!(out.status.code(), Some(2), "{}", common::text(&out));
    assert!(
        common::text(&out).contains("no store"),
        "{}",
        common::text(&out)
    );
    assert!(!SledStore::exists(&data));

    // While the store is held (a running daemon): refused, nothing written.
    let sled = seed_sled(&data).await;
    let out = migrate_store(&data, &settings);
    assert_eq!(out.status.code(), Some(2), "{}", common::text(&out));
    assert!(
        common::text(&out).contains("daemon"),
        "{}",
        common::text(&out)
    );
    assert_eq!(
        pg.try_psql("SELECT count(*) FROM haproxy_acme.records")
            .unwrap_or_else(|_| "0".into()),
        "0"
    );
    drop(sled);

    // Stopped: copied, counted, compared.
    let out = migrate_store(&data, &settings);
    let text = common::text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    for line in [
        "3 records",
        "1 certificates",
        "2 pending keys",
        "1 accounts",
        "3 ledger entries",
        "1 runtime additions",
        "compared: equal",
    ] {
        assert!(text.contains(line), "{line:?} in {text}");
    }
    let target = connect(&pg, &key, "n1").await.unwrap();
    let sled = SledStore::open(&data).unwrap();
    migrate::compare(&sled, &target, &sled.directories().await.unwrap())
        .await
        .unwrap();
    drop(sled);

    // Again: the target is not empty any more.
    let out = migrate_store(&data, &settings);
    let text = common::text(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("empty"), "{text}");
    assert_eq!(pg.psql("SELECT count(*) FROM haproxy_acme.ledger"), "3");
    println!("migrate-store: {:?}", t.elapsed());
}
