//! `migrate-store`: a copy of the sled store in DATA_DIR (records, certificates with their keys,
//! pending keys, ACME accounts and their keys, the rate-limit ledger, the runtime additions) into
//! an empty PostgreSQL store, checked by reading both back: the same records, chains, keys and
//! accounts, or the command fails naming the first difference.

use haproxy_acme_state::Record;

use super::postgres::PgStore;
use super::sled::SledStore;
use super::{Change, Store, StoreError};

/// What was copied.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Copied {
    pub records: usize,
    pub certificates: usize,
    pub pending_keys: usize,
    pub accounts: usize,
    pub ledger_entries: usize,
    pub added: usize,
}

/// Copies `from` into `to` (which must hold nothing yet), then compares them.
pub async fn sled_to_postgres(from: &SledStore, to: &PgStore) -> Result<Copied, String> {
    let e = |e: StoreError| e.to_string();
    let directories = &from.directories().await.map_err(e)?;
    if !to.is_empty().await.map_err(e)? {
        return Err(
            "the PostgreSQL store already holds certificates, accounts or ledger entries: a \
             migration copies into an empty one only (nothing was written)"
                .into(),
        );
    }
    let from: &dyn Store = from;
    let to_dyn: &dyn Store = to;
    let mut copied = Copied::default();
    for directory in directories {
        if let Some(key) = from.account_key(directory).await.map_err(e)? {
            to_dyn.put_account_key(directory, &key).await.map_err(e)?;
        }
        if let Some(creds) = from.account(directory).await.map_err(e)? {
            to_dyn.put_account(directory, &creds).await.map_err(e)?;
            copied.accounts += 1;
        }
        for entry in from.ledger_since(directory, i64::MIN).await.map_err(e)? {
            to_dyn
                .ledger_append(directory, &entry, i64::MIN)
                .await
                .map_err(e)?;
            copied.ledger_entries += 1;
        }
    }
    let added = from.added().await.map_err(e)?;
    copied.added = added.len();
    if !added.is_empty() {
        let list = added.clone();
        to_dyn
            .update_added(Box::new(move |_| Ok(list)))
            .await
            .map_err(e)?
            .map_err(|refused| refused.to_string())?;
    }
    for record in from.records().await.map_err(e)? {
        copied.records += 1;
        copy_record(from, to_dyn, record, &mut copied).await?;
    }
    compare(from, to_dyn, directories).await?;
    Ok(copied)
}

async fn copy_record(
    from: &dyn Store,
    to: &dyn Store,
    record: Record,
    copied: &mut Copied,
) -> Result<(), String> {
    let e = |e: StoreError| e.to_string();
    let id = record.id.clone();
    let pending = from.pending_key(&id).await.map_err(e)?;
    copied.pending_keys += usize::from(pending.is_some());
    let (change, pending_after) = match (from.certificate(&id).await.map_err(e)?, pending) {
        (Some((chain_pem, key_pem)), pending) => {
            copied.certificates += 1;
            // PutAdopted drops a pending key: it goes back beside the certificate after.
            let after = pending.map(|key| (record.clone(), key));
            let adopted = Change::PutAdopted {
                record,
                chain_pem,
                key_pem,
            };
            (adopted, after)
        }
        (None, Some(key)) => (Change::PutWithPendingKey(record, key), None),
        (None, None) => (Change::Put(record), None),
    };
    to.update(&id, move |_| (change, ())).await.map_err(e)?;
    if let Some((r, key)) = pending_after {
        to.update(&id, move |_| (Change::PutWithPendingKey(r, key), ()))
            .await
            .map_err(e)?;
    }
    Ok(())
}

/// Reads both stores back: every record, chain, key, pending key, account and ledger equal.
pub async fn compare(a: &dyn Store, b: &dyn Store, directories: &[String]) -> Result<(), String> {
    let e = |e: StoreError| e.to_string();
    let (ra, rb) = (a.records().await.map_err(e)?, b.records().await.map_err(e)?);
    if ra != rb {
        let ids = |r: &[Record]| r.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
        return Err(format!(
            "the records differ after the copy ({} in sled, {} in PostgreSQL; ids {:?} vs {:?})",
            ra.len(),
            rb.len(),
            ids(&ra),
            ids(&rb)
        ));
    }
    for r in &ra {
        if a.certificate(&r.id).await.map_err(e)? != b.certificate(&r.id).await.map_err(e)? {
            return Err(format!(
                "the certificate or key of {:?} differs after the copy",
                r.id
            ));
        }
        if a.pending_key(&r.id).await.map_err(e)? != b.pending_key(&r.id).await.map_err(e)? {
            return Err(format!(
                "the pending key of {:?} differs after the copy",
                r.id
            ));
        }
    }
    for d in directories {
        if a.account(d).await.map_err(e)? != b.account(d).await.map_err(e)?
            || a.account_key(d).await.map_err(e)? != b.account_key(d).await.map_err(e)?
        {
            return Err(format!("the ACME account of {d} differs after the copy"));
        }
        if a.ledger_since(d, i64::MIN).await.map_err(e)?
            != b.ledger_since(d, i64::MIN).await.map_err(e)?
        {
            return Err(format!(
                "the rate-limit ledger of {d} differs after the copy"
            ));
        }
    }
    if a.added().await.map_err(e)? != b.added().await.map_err(e)? {
        return Err("the certificates added at runtime differ after the copy".into());
    }
    Ok(())
}
