//! `migrate-store`: with the daemon stopped, copies the sled store in DATA_DIR into the empty
//! PostgreSQL store of a fleet (POSTGRES_URL, keys sealed with STORE_KEY_FILE), reads both back
//! and compares them, and prints what it copied. Refused (exit 2) without POSTGRES_URL, without
//! a store in DATA_DIR, while a daemon holds it, or when the PostgreSQL store holds anything.

use super::Exit;
use crate::config::Config;
use crate::store::migrate;
use crate::store::postgres::seal::SealKey;
use crate::store::postgres::PgStore;
use crate::store::sled::SledStore;
use crate::store::StoreError;

pub async fn migrate_store(config: &Config) -> anyhow::Result<()> {
    let fleet = config.fleet.as_ref().ok_or_else(|| {
        Exit(
            2,
            "migrate-store copies the store in DATA_DIR into a fleet's PostgreSQL store: set \
             POSTGRES_URL to it, and STORE_KEY_FILE to the key every instance will use"
                .into(),
        )
    })?;
    let data_dir = &config.data_dir;
    if !SledStore::exists(data_dir) {
        return Err(Exit(
            2,
            format!(
                "DATA_DIR {} holds no store to copy (is DATA_DIR the daemon's?)",
                data_dir.display()
            ),
        )
        .into());
    }
    let sled = match SledStore::open(data_dir) {
        Ok(s) => s,
        Err(StoreError::Locked(dir)) => {
            return Err(Exit(
                2,
                format!(
                    "the store in {} is held by a running daemon: stop it first (the copy must \
                     be of a store nothing writes to), then run migrate-store again; nothing was \
                     copied",
                    dir.display()
                ),
            )
            .into())
        }
        Err(e @ StoreError::Damaged { .. }) => {
            return Err(Exit(crate::recovery::EXIT_DAMAGED, e.to_string()).into())
        }
        Err(e) => return Err(e.into()),
    };
    let key = SealKey::from_file(&fleet.store_key_file).map_err(|e| Exit(2, e))?;
    let target = fleet.postgres_url.redacted();
    let unreachable = |e: StoreError| match e {
        StoreError::Database(why) => anyhow::anyhow!("the PostgreSQL store {target}: {why}"),
        e => e.into(),
    };
    let pg = PgStore::connect(fleet.postgres_url.expose(), key, &fleet.node_name)
        .await
        .map_err(unreachable)?;
    if !pg.is_empty().await.map_err(unreachable)? {
        return Err(Exit(
            2,
            format!(
                "the PostgreSQL store {target} is not empty (it holds certificates, accounts or \
                 ledger entries already): migrate-store copies into an empty one only; nothing \
                 was copied. If all it holds is a migration that did not finish and no instance \
                 has used it, empty it (`DROP SCHEMA haproxy_acme CASCADE`) and run \
                 migrate-store again"
            ),
        )
        .into());
    }
    let copied = migrate::sled_to_postgres(&sled, &pg).await.map_err(|e| {
        anyhow::anyhow!(
            "copying the store into {target}: {e}\nThe store in DATA_DIR is unchanged; the \
                 PostgreSQL store may hold part of the copy: empty it (`DROP SCHEMA haproxy_acme \
                 CASCADE`) before running migrate-store again"
        )
    })?;
    println!(
        "copied the store in {} into PostgreSQL {target}:",
        data_dir.display()
    );
    println!("  {} records", copied.records);
    println!("  {} certificates (with their keys)", copied.certificates);
    println!("  {} pending keys (orders in flight)", copied.pending_keys);
    println!("  {} accounts", copied.accounts);
    println!("  {} ledger entries", copied.ledger_entries);
    println!("  {} runtime additions", copied.added);
    println!("compared: equal");
    println!(
        "start the daemons with POSTGRES_URL and the same STORE_KEY_FILE; the store in DATA_DIR \
         is left as it was"
    );
    Ok(())
}
