//! The shared store backend for a fleet (`POSTGRES_URL`): the same [`Store`](super::Store) on
//! PostgreSQL (implemented in `store.rs`), so every instance beside an HAProxy node reads the
//! same records, tokens and certificates.
//!
//! - Every read-modify-write runs in one transaction under an advisory lock on the record's id
//!   (a shared lock on the whole set beside it; `update_all` takes that one exclusively).
//! - A handle made by [`PgStore::fenced`] carries the leader's fencing token: each of its writes
//!   first reads the lease row `FOR SHARE` and is refused ([`StoreError::Fenced`]) unless this
//!   node still holds it at that epoch. A new holder's `UPDATE` of that row waits for such a
//!   transaction to end, so no write of a former leader commits after a takeover.
//! - Keys and account credentials are sealed ([`seal`]) with `STORE_KEY_FILE`'s key.
//! - Every record change sends `NOTIFY haproxy_acme` with the id (delivered at commit), for the
//!   other instances' responders and installers ([`listen`]).

pub mod lease;
pub mod listen;
mod schema;
pub mod seal;
mod store;
mod views;

use std::sync::Arc;

use deadpool_postgres::{Client, Pool, Transaction};
use haproxy_acme_state::{Record, UnixTime};

use super::sled::codec::{decode, encode};
use super::{Change, StoreError};
use seal::SealKey;

/// The channel of record-change notifications: payload `<instance>\t<id>`, `<instance>\t*` (many
/// records: catch up), `<instance>\tadded` (runtime additions), `<instance>\tlease`.
pub const NOTIFY_CHANNEL: &str = "haproxy_acme";
/// Advisory-lock keys (any constants: only this program takes them).
const ALL_RECORDS_LOCK: i64 = 7_205_385_952;
const ADDED_LOCK: i64 = 7_205_385_953;

/// A PostgreSQL error as a store error, without the URL (it may hold a password).
pub(crate) fn db_err(e: impl std::error::Error) -> StoreError {
    StoreError::Database(error_chain(&e))
}

/// An error with its causes: tokio-postgres prints only the kind ("db error", "error
/// connecting to server") and keeps what the server or the system said in the source.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

/// `url` parsed, with what a fleet needs where the URL says nothing: a connection attempt gives
/// up after 10 s, and a connection whose server is gone without a word (a failover that moved
/// the address, a cut network) is found dead in about a minute (keepalives after 30 s idle,
/// every 10 s, 3 of them; data unacknowledged for 60 s) instead of the system's hours. Without
/// it, the notification connection (idle by design) waited two hours to notice.
pub(crate) fn pg_config(url: &str) -> Result<tokio_postgres::Config, tokio_postgres::Error> {
    use std::time::Duration;
    let mut config: tokio_postgres::Config = url.parse()?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    // tokio-postgres's default idle time is the system's: two hours.
    if config.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
        config.keepalives_idle(Duration::from_secs(30));
    }
    if config.get_keepalives_interval().is_none() {
        config.keepalives_interval(Duration::from_secs(10));
    }
    if config.get_keepalives_retries().is_none() {
        config.keepalives_retries(3);
    }
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(Duration::from_secs(60));
    }
    Ok(config)
}

struct Shared {
    pool: Pool,
    key: SealKey,
    /// NODE_NAME: the lease holder's name and the `installed` rows' node.
    node: String,
    /// This process: notifications it sent itself are told apart by it.
    instance: String,
    /// The URL, for the notification listener's own connection.
    url: String,
}

/// The PostgreSQL store. Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct PgStore {
    shared: Arc<Shared>,
    /// The fencing token every write of this handle is checked against, when set.
    fence: Option<i64>,
}

impl PgStore {
    /// Connects, lays out the tables when they are missing and checks `key` against the store's.
    pub async fn connect(url: &str, key: SealKey, node: &str) -> Result<PgStore, StoreError> {
        let config = pg_config(url).map_err(|e| StoreError::Open {
            path: "POSTGRES_URL".into(),
            detail: format!("it is not a PostgreSQL URL or key=value string: {e}"),
        })?;
        let manager = deadpool_postgres::Manager::from_config(
            config,
            tokio_postgres::NoTls,
            deadpool_postgres::ManagerConfig {
                recycling_method: deadpool_postgres::RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(4)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(std::time::Duration::from_secs(10)))
            .create_timeout(Some(std::time::Duration::from_secs(10)))
            .build()
            .map_err(|e| StoreError::Open {
                path: "POSTGRES_URL".into(),
                detail: e.to_string(),
            })?;
        // The connection's number in this process too: two stores of one node connected in the
        // same second (the tests' instances) would take each other's notices for their own.
        static CONNECTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let instance = format!(
            "{node}/{}/{}/{}",
            std::process::id(),
            crate::clock::unix_now(),
            CONNECTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let store = PgStore {
            shared: Arc::new(Shared {
                pool,
                key,
                node: node.to_string(),
                instance,
                url: url.to_string(),
            }),
            fence: None,
        };
        let mut client = store.client().await?;
        schema::prepare(&mut client, &store.shared.key).await?;
        Ok(store)
    }

    /// This store with every write checked against fencing token `epoch`.
    pub fn fenced(&self, epoch: i64) -> PgStore {
        PgStore {
            shared: self.shared.clone(),
            fence: Some(epoch),
        }
    }

    pub fn node(&self) -> &str {
        &self.shared.node
    }

    pub fn instance(&self) -> &str {
        &self.shared.instance
    }

    pub(crate) fn url(&self) -> &str {
        &self.shared.url
    }

    async fn client(&self) -> Result<Client, StoreError> {
        self.shared.pool.get().await.map_err(db_err)
    }

    /// A transaction with the fencing check done, when this handle has a token.
    async fn begin<'a>(&self, client: &'a mut Client) -> Result<Transaction<'a>, StoreError> {
        let tx = client.transaction().await.map_err(db_err)?;
        if let Some(epoch) = self.fence {
            let held = tx
                .query_opt(
                    "SELECT 1 FROM haproxy_acme.lease WHERE one AND holder = $1 AND epoch = $2 \
                     FOR SHARE",
                    &[&self.shared.node, &epoch],
                )
                .await
                .map_err(db_err)?;
            if held.is_none() {
                return Err(StoreError::Fenced { epoch });
            }
        }
        Ok(tx)
    }

    async fn notify(&self, tx: &Transaction<'_>, what: &str) -> Result<(), StoreError> {
        tx.execute(
            "SELECT pg_notify($1, $2)",
            &[
                &NOTIFY_CHANNEL,
                &format!("{}\t{what}", self.shared.instance),
            ],
        )
        .await
        .map_err(db_err)?;
        Ok(())
    }

    fn seal_key(&self, id: &str, pem: &str) -> Vec<u8> {
        self.shared.key.seal(&format!("key/{id}"), pem.as_bytes())
    }

    fn open_key(&self, id: &str, sealed: &[u8]) -> Result<String, StoreError> {
        self.shared
            .key
            .open(&format!("key/{id}"), sealed)
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| StoreError::Corrupt {
                id: id.into(),
                detail: "its key does not decrypt with STORE_KEY_FILE's key (damaged, or moved \
                         from another row)"
                    .into(),
            })
    }

    fn open_secret(&self, aad: &str, sealed: &[u8]) -> Result<Vec<u8>, StoreError> {
        self.shared
            .key
            .open(aad, sealed)
            .ok_or_else(|| StoreError::Corrupt {
                id: aad.into(),
                detail: "it does not decrypt with STORE_KEY_FILE's key".into(),
            })
    }

    /// What `change` writes for `id`, in `tx`.
    async fn apply(
        &self,
        tx: &Transaction<'_>,
        id: &str,
        change: Change,
    ) -> Result<(), StoreError> {
        debug_assert!(super::change_id_matches(id, &change));
        let put = |r: Record| async move { put_record(tx, &r).await };
        match change {
            Change::Keep => return Ok(()),
            // A commit is durable either way; one that may be lost would save the WAL flush
            // (`synchronous_commit = off`) but not the round trips.
            Change::Put(r) | Change::PutObservation(r) => {
                put(r).await?;
            }
            Change::PutWithPendingKey(r, key) => {
                tx.execute(
                    "INSERT INTO haproxy_acme.pending_keys (id, key_sealed) VALUES ($1, $2) \
                     ON CONFLICT (id) DO UPDATE SET key_sealed = EXCLUDED.key_sealed",
                    &[&id, &self.seal_key(id, &key)],
                )
                .await
                .map_err(db_err)?;
                put(r).await?;
            }
            Change::PutCertificate(r, chain) => {
                let moved = tx
                    .execute(
                        "INSERT INTO haproxy_acme.certificates (id, chain, key_sealed) \
                         SELECT id, $2, key_sealed FROM haproxy_acme.pending_keys WHERE id = $1 \
                         ON CONFLICT (id) DO UPDATE SET chain = EXCLUDED.chain, \
                         key_sealed = EXCLUDED.key_sealed",
                        &[&id, &chain],
                    )
                    .await
                    .map_err(db_err)?;
                if moved == 0 {
                    return Err(StoreError::Write(format!(
                        "no stored key for the order of {id:?}: refusing to store a certificate \
                         without its key"
                    )));
                }
                tx.execute(
                    "DELETE FROM haproxy_acme.pending_keys WHERE id = $1",
                    &[&id],
                )
                .await
                .map_err(db_err)?;
                put(r).await?;
            }
            Change::PutAdopted {
                record,
                chain_pem,
                key_pem,
            } => {
                tx.execute(
                    "DELETE FROM haproxy_acme.pending_keys WHERE id = $1",
                    &[&id],
                )
                .await
                .map_err(db_err)?;
                tx.execute(
                    "INSERT INTO haproxy_acme.certificates (id, chain, key_sealed) \
                     VALUES ($1, $2, $3) ON CONFLICT (id) DO UPDATE SET chain = EXCLUDED.chain, \
                     key_sealed = EXCLUDED.key_sealed",
                    &[&id, &chain_pem, &self.seal_key(id, &key_pem)],
                )
                .await
                .map_err(db_err)?;
                put(record).await?;
            }
            Change::Delete => {
                for table in ["records", "certificates", "pending_keys", "challenges"] {
                    tx.execute(
                        &format!("DELETE FROM haproxy_acme.{table} WHERE id = $1"),
                        &[&id],
                    )
                    .await
                    .map_err(db_err)?;
                }
            }
        }
        self.notify(tx, id).await
    }

    /// Notes what this node's HAProxy serves for `id` (`status` shows a node that lags).
    pub async fn note_installed(&self, id: &str, serial: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO haproxy_acme.installed (node, id, serial, installed_at) \
                 VALUES ($1, $2, $3, now()) ON CONFLICT (node, id) DO UPDATE SET \
                 serial = EXCLUDED.serial, installed_at = now()",
                &[&self.shared.node, &id, &serial],
            )
            .await
            .map_err(db_err)?;
        Ok(())
    }

    /// Every node's installed serial per certificate: (node, id, serial), by node then id.
    pub async fn installed(&self) -> Result<Vec<(String, String, String)>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT node, id, serial FROM haproxy_acme.installed ORDER BY node, id",
                &[],
            )
            .await
            .map_err(db_err)?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    /// The nodes and when each was last seen (its store probe), by name.
    pub async fn nodes(&self) -> Result<Vec<(String, UnixTime)>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT node, extract(epoch from seen_at)::bigint FROM haproxy_acme.nodes \
                 ORDER BY node",
                &[],
            )
            .await
            .map_err(db_err)?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// The account directories stored (for a copy of the whole store).
    pub async fn account_directories(&self) -> Result<Vec<String>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT directory FROM haproxy_acme.account_keys UNION \
                 SELECT directory FROM haproxy_acme.accounts ORDER BY 1",
                &[],
            )
            .await
            .map_err(db_err)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Whether the store holds nothing a migration copies yet: no record, key, account, ledger
    /// entry or runtime addition (a migration's target; a second copy would double the ledger).
    pub async fn is_empty(&self) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT (SELECT count(*) FROM haproxy_acme.records) + \
                 (SELECT count(*) FROM haproxy_acme.certificates) + \
                 (SELECT count(*) FROM haproxy_acme.pending_keys) + \
                 (SELECT count(*) FROM haproxy_acme.accounts) + \
                 (SELECT count(*) FROM haproxy_acme.account_keys) + \
                 (SELECT count(*) FROM haproxy_acme.ledger) + \
                 (SELECT count(*) FROM haproxy_acme.settings WHERE key = 'added-domains')",
                &[],
            )
            .await
            .map_err(db_err)?;
        Ok(row.get::<_, i64>(0) == 0)
    }
}

/// Record `id` as `client` (a connection, or a transaction holding its lock) reads it.
pub(super) async fn read_record(
    client: &impl deadpool_postgres::GenericClient,
    id: &str,
) -> Result<Option<Record>, StoreError> {
    let row = client
        .query_opt(
            "SELECT body FROM haproxy_acme.records WHERE id = $1",
            &[&id],
        )
        .await
        .map_err(db_err)?;
    row.map(|r| decode(id, r.get::<_, &str>(0).as_bytes()))
        .transpose()
}

/// The record of a row of `SELECT id, body FROM haproxy_acme.records ...`.
pub(super) fn record_of(row: &tokio_postgres::Row) -> Result<Record, StoreError> {
    let id: &str = row.get(0);
    decode(id, row.get::<_, &str>(1).as_bytes())
}

/// Writes record `r` and the HTTP-01 challenges its order publishes (by token, for the
/// responders of nodes that have not seen its notification yet).
pub(super) async fn put_record(tx: &Transaction<'_>, r: &Record) -> Result<(), StoreError> {
    let body = String::from_utf8(encode(r)).expect("JSON is UTF-8");
    tx.execute(
        "INSERT INTO haproxy_acme.records (id, body) VALUES ($1, $2) ON CONFLICT (id) \
         DO UPDATE SET body = EXCLUDED.body, updated_at = now()",
        &[&r.id, &body],
    )
    .await
    .map_err(db_err)?;
    tx.execute(
        "DELETE FROM haproxy_acme.challenges WHERE id = $1",
        &[&r.id],
    )
    .await
    .map_err(db_err)?;
    for c in r.order().iter().flat_map(|o| &o.challenges) {
        if c.kind == haproxy_acme_state::ChallengeType::Http01 {
            tx.execute(
                "INSERT INTO haproxy_acme.challenges (token, id, key_authorization) \
                 VALUES ($1, $2, $3) ON CONFLICT (token) DO UPDATE SET id = EXCLUDED.id, \
                 key_authorization = EXCLUDED.key_authorization",
                &[&c.token, &r.id, &c.key_authorization],
            )
            .await
            .map_err(db_err)?;
        }
    }
    Ok(())
}

#[async_trait::async_trait]
impl crate::responder::TokenSource for PgStore {
    async fn key_authorization(&self, token: &str) -> Option<String> {
        let client = self.client().await.ok()?;
        let row = client
            .query_opt(
                "SELECT key_authorization FROM haproxy_acme.challenges WHERE token = $1",
                &[&token],
            )
            .await
            .ok()?;
        row.map(|r| r.get(0))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn connections_give_up_and_find_a_dead_server_unless_the_url_says_otherwise() {
        let c = super::pg_config("postgres://acme@db.example/acme").unwrap();
        assert_eq!(c.get_connect_timeout(), Some(&Duration::from_secs(10)));
        assert_eq!(c.get_keepalives_idle(), Duration::from_secs(30));
        assert_eq!(c.get_keepalives_interval(), Some(Duration::from_secs(10)));
        assert_eq!(c.get_keepalives_retries(), Some(3));
        assert_eq!(c.get_tcp_user_timeout(), Some(&Duration::from_secs(60)));
        let c = super::pg_config(
            "postgres://acme@db.example/acme?connect_timeout=3&keepalives_idle=5&tcp_user_timeout=7",
        )
        .unwrap();
        assert_eq!(c.get_connect_timeout(), Some(&Duration::from_secs(3)));
        assert_eq!(c.get_keepalives_idle(), Duration::from_secs(5));
        assert_eq!(c.get_tcp_user_timeout(), Some(&Duration::from_secs(7)));
        let c = super::pg_config("host=db.example user=acme connect_timeout=4").unwrap();
        assert_eq!(c.get_connect_timeout(), Some(&Duration::from_secs(4)));
        assert_eq!(c.get_keepalives_idle(), Duration::from_secs(30));
    }
}
