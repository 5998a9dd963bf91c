//! What the fleet reads besides the `Store` calls: the records changed since a point in
//! PostgreSQL's time (the mirror's catch-up passes, so a pass costs what changed, not the whole
//! store).

use futures_util::TryStreamExt;
use haproxy_acme_state::Record;

use super::{db_err, PgStore};
use crate::store::StoreError;

impl PgStore {
    /// The records written at or after `since_ms` (milliseconds of PostgreSQL's clock; `None`:
    /// every record), in id order, and PostgreSQL's time when the read began.
    pub async fn changed_since(
        &self,
        since_ms: Option<i64>,
    ) -> Result<(Vec<Record>, i64), StoreError> {
        let client = self.client().await?;
        let now: i64 = client
            .query_one(
                "SELECT (extract(epoch from clock_timestamp()) * 1000)::bigint",
                &[],
            )
            .await
            .map_err(db_err)?
            .get(0);
        let since = since_ms.unwrap_or(0);
        let rows = client
            .query_raw(
                "SELECT id, body FROM haproxy_acme.records \
                 WHERE updated_at >= to_timestamp($1::bigint / 1000.0) ORDER BY id",
                [since],
            )
            .await
            .map_err(db_err)?;
        futures_util::pin_mut!(rows);
        let mut records = Vec::new();
        while let Some(row) = rows.try_next().await.map_err(db_err)? {
            records.push(super::record_of(&row)?);
        }
        Ok((records, now))
    }
}
