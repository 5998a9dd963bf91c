//! The lease that makes one instance of a fleet the writer to the CA, with its fencing token:
//! the lease row's `epoch`, raised by every new holder. Times are PostgreSQL's (`now()`), so
//! the instances' clocks need not agree; each holder also counts the lease down on its own
//! monotonic clock from before it asked, and stops talking to the CA when that runs out.

use std::time::{Duration, Instant};

use haproxy_acme_state::UnixTime;
use serde::Serialize;

use super::{db_err, PgStore, NOTIFY_CHANNEL};
use crate::store::StoreError;

/// Who leads, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaseInfo {
    pub holder: Option<String>,
    pub epoch: i64,
    pub since: Option<UnixTime>,
    pub expires_at: Option<UnixTime>,
    /// Whether `expires_at` is still ahead (by PostgreSQL's clock).
    pub live: bool,
}

/// A lease this instance holds: its fencing token and until when (monotonic, conservative:
/// counted from before the request that got or renewed it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub epoch: i64,
    pub valid_until: Instant,
}

impl PgStore {
    /// Takes the lease when nobody holds a live one (or this node held it: a restart), raising
    /// the epoch. `None`: another instance leads.
    pub async fn try_lead(&self, ttl: Duration) -> Result<Option<Held>, StoreError> {
        let asked = Instant::now();
        let client = self.client().await?;
        let row = client
            .query_opt(
                "UPDATE haproxy_acme.lease SET holder = $1, epoch = epoch + 1, since = now(), \
                 expires_at = now() + make_interval(secs => $2) \
                 WHERE one AND (holder IS NULL OR expires_at IS NULL OR expires_at < now() \
                 OR holder = $1) RETURNING epoch",
                &[&self.node(), &ttl.as_secs_f64()],
            )
            .await
            .map_err(db_err)?;
        Ok(row.map(|r| Held {
            epoch: r.get(0),
            valid_until: asked + ttl,
        }))
    }

    /// Extends the lease `held`. `Ok(None)`: it was taken over (or the row changed).
    pub async fn renew_lead(&self, held: Held, ttl: Duration) -> Result<Option<Held>, StoreError> {
        let asked = Instant::now();
        let client = self.client().await?;
        let n = client
            .execute(
                "UPDATE haproxy_acme.lease SET expires_at = now() + make_interval(secs => $3) \
                 WHERE one AND holder = $1 AND epoch = $2 AND expires_at > now()",
                &[&self.node(), &held.epoch, &ttl.as_secs_f64()],
            )
            .await
            .map_err(db_err)?;
        Ok((n == 1).then_some(Held {
            epoch: held.epoch,
            valid_until: asked + ttl,
        }))
    }

    /// Gives the lease up (a clean shutdown): the others are told at once.
    pub async fn release_lead(&self, held: Held) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE haproxy_acme.lease SET expires_at = now() - interval '1 millisecond' \
                 WHERE one AND holder = $1 AND epoch = $2",
                &[&self.node(), &held.epoch],
            )
            .await
            .map_err(db_err)?;
        client
            .execute(
                "SELECT pg_notify($1, $2)",
                &[&NOTIFY_CHANNEL, &format!("{}\tlease", self.instance())],
            )
            .await
            .map_err(db_err)?;
        Ok(())
    }

    /// The lease as stored.
    pub async fn lease(&self) -> Result<LeaseInfo, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT holder, epoch, extract(epoch from since)::bigint, \
                 extract(epoch from expires_at)::bigint, coalesce(expires_at > now(), false) \
                 FROM haproxy_acme.lease WHERE one",
                &[],
            )
            .await
            .map_err(db_err)?;
        Ok(LeaseInfo {
            holder: row.get(0),
            epoch: row.get(1),
            since: row.get(2),
            expires_at: row.get(3),
            live: row.get(4),
        })
    }
}
