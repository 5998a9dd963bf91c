//! The [`Store`] trait on PostgreSQL: each method one statement or one transaction of the
//! [`PgStore`]'s pool; read-modify-writes under the advisory locks and the fencing check of
//! `PgStore::begin`, every change announced with `NOTIFY` in its transaction.

use async_trait::async_trait;
use haproxy_acme_state::ledger::Entry;
use haproxy_acme_state::{Record, UnixTime};

use super::{db_err, PgStore, ADDED_LOCK, ALL_RECORDS_LOCK};
use crate::store::{AddedFn, Change, Store, StoreError, SweepFn, UpdateFn};

#[async_trait]
impl Store for PgStore {
    async fn get(&self, id: &str) -> Result<Option<Record>, StoreError> {
        super::read_record(&self.client().await?, id).await
    }

    async fn scan(&self, mut visit: Box<dyn FnMut(Record) + Send>) -> Result<(), StoreError> {
        use futures_util::TryStreamExt;
        let client = self.client().await?;
        let rows = client
            .query_raw(
                "SELECT id, body FROM haproxy_acme.records ORDER BY id",
                std::iter::empty::<&str>(),
            )
            .await
            .map_err(db_err)?;
        futures_util::pin_mut!(rows);
        while let Some(row) = rows.try_next().await.map_err(db_err)? {
            visit(super::record_of(&row)?);
        }
        Ok(())
    }

    async fn update_boxed(&self, id: &str, f: UpdateFn) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = self.begin(&mut client).await?;
        tx.execute(
            "SELECT pg_advisory_xact_lock_shared($1), pg_advisory_xact_lock(hashtextextended($2, 0))",
            &[&ALL_RECORDS_LOCK, &id],
        )
        .await
        .map_err(db_err)?;
        let change = f(super::read_record(&tx, id).await?);
        if change == Change::Keep {
            return Ok(());
        }
        self.apply(&tx, id, change).await?;
        tx.commit().await.map_err(db_err)
    }

    async fn update_all(
        &self,
        mut sweep: SweepFn,
        more: Box<dyn FnOnce() -> Vec<Record> + Send>,
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = self.begin(&mut client).await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&ALL_RECORDS_LOCK])
            .await
            .map_err(db_err)?;
        let rows = tx
            .query("SELECT id, body FROM haproxy_acme.records ORDER BY id", &[])
            .await
            .map_err(db_err)?;
        let mut changed = Vec::new();
        for row in &rows {
            if let Some(r) = sweep(&super::record_of(row)?) {
                changed.push(r);
            }
        }
        changed.extend(more());
        if changed.is_empty() {
            return Ok(());
        }
        for r in &changed {
            super::put_record(&tx, r).await?;
        }
        self.notify(&tx, "*").await?;
        tx.commit().await.map_err(db_err)
    }

    async fn pending_key(&self, id: &str) -> Result<Option<String>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT key_sealed FROM haproxy_acme.pending_keys WHERE id = $1",
                &[&id],
            )
            .await
            .map_err(db_err)?;
        row.map(|r| self.open_key(id, r.get(0))).transpose()
    }

    async fn certificate(&self, id: &str) -> Result<Option<(String, String)>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT chain, key_sealed FROM haproxy_acme.certificates WHERE id = $1",
                &[&id],
            )
            .await
            .map_err(db_err)?;
        row.map(|r| Ok((r.get(0), self.open_key(id, r.get(1))?)))
            .transpose()
    }

    async fn added(&self) -> Result<Vec<Vec<String>>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT value FROM haproxy_acme.settings WHERE key = 'added-domains'",
                &[],
            )
            .await
            .map_err(db_err)?;
        parse_added(row.map(|r| r.get::<_, Vec<u8>>(0)))
    }

    async fn update_added(
        &self,
        f: AddedFn,
    ) -> Result<Result<Vec<Vec<String>>, String>, StoreError> {
        let mut client = self.client().await?;
        let tx = self.begin(&mut client).await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&ADDED_LOCK])
            .await
            .map_err(db_err)?;
        let row = tx
            .query_opt(
                "SELECT value FROM haproxy_acme.settings WHERE key = 'added-domains'",
                &[],
            )
            .await
            .map_err(db_err)?;
        let old = parse_added(row.map(|r| r.get::<_, Vec<u8>>(0)))?;
        let mut new_list = None;
        let answer = crate::store::change_added(&old, f, |new| {
            new_list = Some(serde_json::to_vec(new).expect("lists of names serialize"));
            Ok(())
        })?;
        if let Some(bytes) = new_list {
            tx.execute(
                "INSERT INTO haproxy_acme.settings (key, value) VALUES ('added-domains', $1) \
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                &[&bytes],
            )
            .await
            .map_err(db_err)?;
            self.notify(&tx, "added").await?;
            tx.commit().await.map_err(db_err)?;
        }
        Ok(answer)
    }

    async fn ledger_append(
        &self,
        directory: &str,
        entry: &Entry,
        keep_since: UnixTime,
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = self.begin(&mut client).await?;
        let json = serde_json::to_string(entry).expect("ledger entries serialize");
        tx.execute(
            "INSERT INTO haproxy_acme.ledger (directory, at, entry) VALUES ($1, $2, $3)",
            &[&directory, &entry.at(), &json],
        )
        .await
        .map_err(db_err)?;
        tx.execute(
            "DELETE FROM haproxy_acme.ledger WHERE directory = $1 AND at < $2",
            &[&directory, &keep_since],
        )
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)
    }

    async fn ledger_since(
        &self,
        directory: &str,
        since: UnixTime,
    ) -> Result<Vec<Entry>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT entry FROM haproxy_acme.ledger WHERE directory = $1 AND at >= $2 \
                 ORDER BY at, seq",
                &[&directory, &since],
            )
            .await
            .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                serde_json::from_str(r.get(0)).map_err(|e| StoreError::Corrupt {
                    id: format!("ledger of {directory}"),
                    detail: e.to_string(),
                })
            })
            .collect()
    }

    async fn account(&self, directory: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.directory_secret(&ACCOUNTS, directory).await
    }

    async fn put_account(&self, directory: &str, credentials: &[u8]) -> Result<(), StoreError> {
        self.put_directory_secret(&ACCOUNTS, directory, credentials)
            .await
    }

    async fn account_key(&self, directory: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.directory_secret(&ACCOUNT_KEYS, directory).await
    }

    async fn put_account_key(&self, directory: &str, pkcs8_der: &[u8]) -> Result<(), StoreError> {
        self.put_directory_secret(&ACCOUNT_KEYS, directory, pkcs8_der)
            .await
    }

    async fn probe_write(&self, _now: UnixTime) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO haproxy_acme.nodes (node, seen_at) VALUES ($1, now()) \
                 ON CONFLICT (node) DO UPDATE SET seen_at = now()",
                &[&self.shared.node],
            )
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn snapshot(&self, _now: UnixTime) -> Result<Vec<u8>, StoreError> {
        Err(StoreError::Unsupported(
            "snapshots of a PostgreSQL store: back it up with pg_dump (its keys stay encrypted)",
        ))
    }
}

fn parse_added(bytes: Option<Vec<u8>>) -> Result<Vec<Vec<String>>, StoreError> {
    bytes
        .map(|b| {
            serde_json::from_slice(&b).map_err(|e| StoreError::Corrupt {
                id: "added-domains".into(),
                detail: e.to_string(),
            })
        })
        .transpose()
        .map(Option::unwrap_or_default)
}

/// A table holding one sealed value per ACME directory, and the prefix of its rows' names (the
/// sealed values' associated data: `<aad>/<directory>`).
struct DirectorySecret {
    table: &'static str,
    column: &'static str,
    aad: &'static str,
}

/// The account credentials (instant-acme's JSON, which holds the key).
const ACCOUNTS: DirectorySecret = DirectorySecret {
    table: "accounts",
    column: "credentials_sealed",
    aad: "account",
};
/// The account key made before the account.
const ACCOUNT_KEYS: DirectorySecret = DirectorySecret {
    table: "account_keys",
    column: "key_sealed",
    aad: "account-key",
};

impl PgStore {
    async fn directory_secret(
        &self,
        t: &DirectorySecret,
        directory: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!(
                    "SELECT {} FROM haproxy_acme.{} WHERE directory = $1",
                    t.column, t.table
                ),
                &[&directory],
            )
            .await
            .map_err(db_err)?;
        row.map(|r| self.open_secret(&format!("{}/{directory}", t.aad), r.get(0)))
            .transpose()
    }

    /// Writes the sealed value of `directory` (fenced, on a leader's handle).
    async fn put_directory_secret(
        &self,
        t: &DirectorySecret,
        directory: &str,
        value: &[u8],
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = self.begin(&mut client).await?;
        let sealed = self
            .shared
            .key
            .seal(&format!("{}/{directory}", t.aad), value);
        tx.execute(
            &format!(
                "INSERT INTO haproxy_acme.{table} (directory, {col}) VALUES ($1, $2) \
                 ON CONFLICT (directory) DO UPDATE SET {col} = EXCLUDED.{col}",
                table = t.table,
                col = t.column
            ),
            &[&directory, &sealed],
        )
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)
    }
}
