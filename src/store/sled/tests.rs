//! Unit tests of `store::sled`.

use super::*;
use haproxy_acme_state::{apply, CertMeta, Event, KeyType};

/// A record as version 1 wrote it. Persisted formats are contracts: this must keep loading.
const RECORD_V1: &str = r#"{"schema_version":1,"id":"a.test","names":["a.test","www.a.test"],
    "key_type":"ecdsa-p256","phase":"validating","order":{"url":"https://ca/order/1",
    "created_at":10,"challenges":[{"token":"tok","key_authorization":"tok.thumb"}],
    "key_generated":true},"cert":null,"installed_fingerprint":null,"renew_at":null,
    "failure":null,"created_at":10,"updated_at":10}"#;

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
    let store = Inner::open(dir.path()).unwrap();
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
