//! The PostgreSQL store's tables (in their own schema, `haproxy_acme`), created at the first
//! connection of any instance, and the check of the operator's key against the one the store
//! was first written with.

use deadpool_postgres::Client;

use super::db_err;
use super::seal::{SealKey, CHECK_PLAINTEXT};
use crate::store::StoreError;

/// The version of the tables below; an instance refuses a store a newer version laid out.
pub const SCHEMA_VERSION: i64 = 1;

/// Every statement is idempotent: instances starting together all run it (serialized by an
/// advisory lock, since concurrent `CREATE ... IF NOT EXISTS` can still collide).
const TABLES: &str = r#"
CREATE SCHEMA IF NOT EXISTS haproxy_acme;
-- one row per certificate id: the state crate's Record as JSON (it carries schema_version)
CREATE TABLE IF NOT EXISTS haproxy_acme.records (
    id text PRIMARY KEY,
    body text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS records_by_update ON haproxy_acme.records (updated_at);
-- the stored certificate of an id and its key (sealed), written together
CREATE TABLE IF NOT EXISTS haproxy_acme.certificates (
    id text PRIMARY KEY,
    chain text NOT NULL,
    key_sealed bytea NOT NULL
);
-- the key generated for the order in flight, before any finalize uses it (sealed)
CREATE TABLE IF NOT EXISTS haproxy_acme.pending_keys (
    id text PRIMARY KEY,
    key_sealed bytea NOT NULL
);
-- per ACME directory: the account key made before the account, and the account (both sealed)
CREATE TABLE IF NOT EXISTS haproxy_acme.account_keys (
    directory text PRIMARY KEY,
    key_sealed bytea NOT NULL
);
CREATE TABLE IF NOT EXISTS haproxy_acme.accounts (
    directory text PRIMARY KEY,
    credentials_sealed bytea NOT NULL
);
-- the rate-limit ledger
CREATE TABLE IF NOT EXISTS haproxy_acme.ledger (
    directory text NOT NULL,
    at bigint NOT NULL,
    seq bigserial,
    entry text NOT NULL,
    PRIMARY KEY (directory, at, seq)
);
-- small values: 'added-domains' (JSON), 'key-check' (sealed), 'schema-version'
CREATE TABLE IF NOT EXISTS haproxy_acme.settings (
    key text PRIMARY KEY,
    value bytea NOT NULL
);
-- the one writer to the CA: who holds the lease, its fencing token (epoch), until when
CREATE TABLE IF NOT EXISTS haproxy_acme.lease (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    holder text,
    epoch bigint NOT NULL DEFAULT 0,
    since timestamptz,
    expires_at timestamptz
);
INSERT INTO haproxy_acme.lease (one) VALUES (true) ON CONFLICT DO NOTHING;
-- the HTTP-01 challenges the records publish, by token: a node's responder asks here for a
-- token whose record's notification it has not seen yet
CREATE TABLE IF NOT EXISTS haproxy_acme.challenges (
    token text PRIMARY KEY,
    id text NOT NULL,
    key_authorization text NOT NULL
);
CREATE INDEX IF NOT EXISTS challenges_by_id ON haproxy_acme.challenges (id);
-- each instance: last seen (its store probe), and what its HAProxy serves per certificate
CREATE TABLE IF NOT EXISTS haproxy_acme.nodes (
    node text PRIMARY KEY,
    seen_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS haproxy_acme.installed (
    node text NOT NULL,
    id text NOT NULL,
    serial text NOT NULL,
    installed_at timestamptz NOT NULL,
    PRIMARY KEY (node, id)
);
"#;

/// Lays out the tables (idempotent) and checks the schema version and the key.
pub async fn prepare(client: &mut Client, key: &SealKey) -> Result<(), StoreError> {
    let tx = client.transaction().await.map_err(db_err)?;
    // Any constant: only instances of this program take it.
    // `IF NOT EXISTS` notices ("already exists, skipping") are not news.
    tx.batch_execute("SET LOCAL client_min_messages TO warning")
        .await
        .map_err(db_err)?;
    tx.execute("SELECT pg_advisory_xact_lock(7205385951)", &[])
        .await
        .map_err(db_err)?;
    // Laid out already at this version: nothing to create, so a role granted only the use of
    // the tables (the schema made by its owner) starts too; CREATE ... IF NOT EXISTS checks the
    // right to create before it looks whether the object exists.
    let laid_out: bool = tx
        .query_one(
            "SELECT to_regclass('haproxy_acme.settings') IS NOT NULL",
            &[],
        )
        .await
        .map_err(db_err)?
        .get(0);
    let version = match laid_out {
        false => None,
        true => tx
            .query_opt(
                "SELECT value FROM haproxy_acme.settings WHERE key = 'schema-version'",
                &[],
            )
            .await
            .map_err(db_err)?
            .map(|row| {
                let v: Vec<u8> = row.get(0);
                String::from_utf8_lossy(&v)
                    .parse::<i64>()
                    .unwrap_or(i64::MAX)
            }),
    };
    match version {
        Some(v) if v > SCHEMA_VERSION => {
            return Err(StoreError::Open {
                path: "PostgreSQL schema haproxy_acme".into(),
                detail: format!(
                    "its tables are of version {v}, this build knows {SCHEMA_VERSION}: run a \
                     newer haproxy-acme"
                ),
            })
        }
        Some(SCHEMA_VERSION) => {}
        Some(_) => tx.batch_execute(TABLES).await.map_err(db_err)?,
        None => {
            tx.batch_execute(TABLES).await.map_err(db_err)?;
            tx.execute(
                "INSERT INTO haproxy_acme.settings (key, value) VALUES ('schema-version', $1)",
                &[&SCHEMA_VERSION.to_string().into_bytes()],
            )
            .await
            .map_err(db_err)?;
        }
    }
    let check = tx
        .query_opt(
            "SELECT value FROM haproxy_acme.settings WHERE key = 'key-check'",
            &[],
        )
        .await
        .map_err(db_err)?;
    match check {
        Some(row) => {
            let sealed: Vec<u8> = row.get(0);
            if key.open("settings/key-check", &sealed).as_deref() != Some(CHECK_PLAINTEXT) {
                return Err(StoreError::Open {
                    path: "PostgreSQL schema haproxy_acme".into(),
                    detail: "STORE_KEY_FILE is not the key this store was written with: the keys \
                             in it cannot be read. Give every instance the key file the first \
                             one started with (nothing was changed; no certificate is ordered \
                             again)"
                        .into(),
                });
            }
        }
        None => {
            tx.execute(
                "INSERT INTO haproxy_acme.settings (key, value) VALUES ('key-check', $1)",
                &[&key.seal("settings/key-check", CHECK_PLAINTEXT)],
            )
            .await
            .map_err(db_err)?;
        }
    }
    tx.commit().await.map_err(db_err)
}
