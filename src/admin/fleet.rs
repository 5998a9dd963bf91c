//! The admin endpoint's view of a fleet (`status`, `state dump`, `/metrics`): the shared store's
//! lease row, nodes and installed serials, read in three small queries at once, and whether this
//! instance leads now (the [`crate::fleet::Leader`]'s `leading`).

use haproxy_acme_state::dump::fleet::{FleetFacts, LeaseFacts};
use tokio::sync::watch;

use crate::store::postgres::PgStore;
use crate::store::StoreError;

/// What the admin endpoint reads a fleet through.
pub struct FleetView {
    pub pg: PgStore,
    /// The epoch of this instance's term while it leads.
    pub leading: watch::Receiver<Option<i64>>,
}

impl FleetView {
    /// The fleet as stored now.
    pub async fn facts(&self) -> Result<FleetFacts, StoreError> {
        let (lease, nodes, installed) =
            tokio::try_join!(self.pg.lease(), self.pg.nodes(), self.pg.installed())?;
        Ok(FleetFacts {
            node: self.pg.node().to_string(),
            leading: *self.leading.borrow(),
            lease: LeaseFacts {
                holder: lease.holder,
                epoch: lease.epoch,
                since: lease.since,
                expires_at: lease.expires_at,
                live: lease.live,
            },
            nodes,
            installed,
        })
    }
}
