//! A fleet's gauges, from the same view as the dump's `fleet` (so they never disagree): whether
//! this instance leads, the lease's epoch, the certificates each node lags behind on, and the
//! nodes seen lately. Registered only in a fleet.

use haproxy_acme_state::dump::fleet::{FleetView, SEEN_WITHIN};
use haproxy_acme_state::UnixTime;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabel {
    /// The node's NODE_NAME.
    node: String,
}

/// Adds the fleet gauges of `view` at `now` to `reg`.
pub(super) fn register(reg: &mut Registry, view: &FleetView, now: UnixTime) {
    let leader = Gauge::<i64>::default();
    leader.set(i64::from(view.leading));
    reg.register(
        "fleet_leader",
        "1 while this instance holds the fleet's lease (runs the reconciler, talks to the CA), else 0",
        leader,
    );
    let epoch = Gauge::<i64>::default();
    epoch.set(view.lease.epoch);
    reg.register(
        "fleet_lease_epoch",
        "The lease's fencing token, raised by every new holder (a rise is a change of leader)",
        epoch,
    );
    let lagging = Family::<NodeLabel, Gauge>::default();
    for n in &view.nodes {
        let labels = NodeLabel {
            node: n.name.clone(),
        };
        lagging.get_or_create(&labels).set(n.lagging.len() as i64);
    }
    reg.register(
        "fleet_node_lagging",
        "Certificates whose stored serial the node's HAProxy was not given yet (0: current)",
        lagging,
    );
    let nodes = Gauge::<i64>::default();
    nodes.set(view.live_nodes(now) as i64);
    reg.register(
        "fleet_nodes",
        format!("Nodes whose instance was seen within the last {SEEN_WITHIN} s"),
        nodes,
    );
}

#[cfg(test)]
mod tests {
    use haproxy_acme_state::dump::fleet::{FleetFacts, LeaseFacts};
    use haproxy_acme_state::{CertMeta, KeyType, Record};

    use super::*;

    #[test]
    fn a_lagging_node_and_the_leader_are_gauges() {
        let mut r = Record::new(vec!["a.test".into()], KeyType::EcdsaP256, 0);
        r.cert = Some(CertMeta {
            serial: "0A".into(),
            not_before: 0,
            not_after: 100,
            fingerprint: "f".into(),
            issued_at: 0,
        });
        let facts = FleetFacts {
            node: "node-1".into(),
            leading: Some(4),
            lease: LeaseFacts {
                holder: Some("node-1".into()),
                epoch: 4,
                since: Some(900),
                expires_at: Some(1010),
                live: true,
            },
            nodes: vec![("node-1".into(), 1000), ("node-2".into(), 700)],
            installed: vec![
                ("node-1".into(), "a.test".into(), "0A".into()),
                ("node-2".into(), "a.test".into(), "09".into()),
            ],
        };
        let text = crate::metrics::global().render_records(
            &[],
            1000,
            true,
            1000,
            Some(&FleetView::new(&facts, [&r])),
            crate::metrics::PerCertificate::Auto,
        );
        for line in [
            "haproxy_acme_fleet_leader 1\n",
            "haproxy_acme_fleet_lease_epoch 4\n",
            "haproxy_acme_fleet_node_lagging{node=\"node-1\"} 0\n",
            "haproxy_acme_fleet_node_lagging{node=\"node-2\"} 1\n",
            "haproxy_acme_fleet_nodes 1\n",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
    }
}
