//! A fleet as operators see it (the dump's `fleet`, the `status` lines, the fleet metrics):
//! which instance leads and since when, and per node the serial it installed of each
//! certificate, so a node that lags behind the store is visible. Built from what the shared
//! store holds (the lease row, the nodes' last-seen times, the installed serials) and the
//! records; absent on one machine.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{human, rfc3339};
use crate::{Record, UnixTime};

/// A node not seen for longer than this is left out of the count of live nodes and says so.
pub const SEEN_WITHIN: i64 = 120;

/// What the daemon read of the fleet, as it hands it to the dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetFacts {
    /// This instance's NODE_NAME.
    pub node: String,
    /// The epoch of this instance's term, while it leads.
    pub leading: Option<i64>,
    pub lease: LeaseFacts,
    /// Every node and when it was last seen (by name).
    pub nodes: Vec<(String, UnixTime)>,
    /// What each node installed: (node, certificate id, serial).
    pub installed: Vec<(String, String, String)>,
}

/// The lease as stored (times by PostgreSQL's clock).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeaseFacts {
    pub holder: Option<String>,
    pub epoch: i64,
    pub since: Option<UnixTime>,
    pub expires_at: Option<UnixTime>,
    /// Whether `expires_at` is still ahead.
    pub live: bool,
}

/// The dump's `fleet`.
#[derive(Debug, Clone, Serialize)]
pub struct FleetView {
    /// This instance's node name.
    pub node: String,
    /// Whether this instance leads (runs the reconciler, talks to the CA).
    pub leading: bool,
    pub lease: LeaseView,
    /// Every node that was seen or installed something, by name.
    pub nodes: Vec<NodeView>,
    #[serde(skip)]
    raw: LeaseFacts,
}

#[derive(Debug, Clone, Serialize)]
pub struct LeaseView {
    /// The node that holds (or last held) the lease; `null`: nobody ever led.
    pub holder: Option<String>,
    /// The fencing token: raised by every new holder.
    pub epoch: i64,
    /// When the holder took it.
    pub since: Option<String>,
    pub expires_at: Option<String>,
    /// False: nobody leads now (the holder stopped, or its lease ran out).
    pub live: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    pub name: String,
    /// When its instance was last seen (`null`: never; only its installs are known).
    pub last_seen: Option<String>,
    /// The serial its HAProxy was last given, per certificate id.
    pub installed: BTreeMap<String, String>,
    /// The certificates whose stored serial it does not serve (not installed yet, or an older
    /// one): empty when it is current.
    pub lagging: Vec<String>,
    /// Certificates with a stored serial, i.e. what `lagging` is out of.
    #[serde(skip)]
    pub of: usize,
    #[serde(skip)]
    pub seen_at: Option<UnixTime>,
}

impl FleetView {
    /// The view of `facts` against the stored certificates of `records`.
    pub fn new<'a>(facts: &FleetFacts, records: impl IntoIterator<Item = &'a Record>) -> Self {
        let stored = records
            .into_iter()
            .filter_map(|r| Some((r.id.as_str(), r.cert.as_ref()?.serial.as_str())));
        FleetView::from_serials(facts, stored)
    }

    /// The view of `facts` against the stored serials, by certificate id.
    pub fn from_serials<'a>(
        facts: &FleetFacts,
        serials: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Self {
        let stored: BTreeMap<&str, &str> = serials.into_iter().collect();
        let mut nodes: BTreeMap<&str, NodeView> = BTreeMap::new();
        let node = |name: &str| NodeView {
            name: name.to_string(),
            last_seen: None,
            installed: BTreeMap::new(),
            lagging: Vec::new(),
            of: 0,
            seen_at: None,
        };
        for (name, at) in &facts.nodes {
            let n = nodes.entry(name).or_insert_with(|| node(name));
            n.seen_at = Some(*at);
            n.last_seen = Some(rfc3339(*at));
        }
        for (name, id, serial) in &facts.installed {
            if stored.contains_key(id.as_str()) {
                let n = nodes.entry(name).or_insert_with(|| node(name));
                n.installed.insert(id.clone(), serial.clone());
            }
        }
        for n in nodes.values_mut() {
            n.of = stored.len();
            n.lagging = stored
                .iter()
                .filter(|(id, serial)| n.installed.get(**id).map(String::as_str) != Some(**serial))
                .map(|(id, _)| id.to_string())
                .collect();
        }
        let l = &facts.lease;
        FleetView {
            node: facts.node.clone(),
            leading: facts.leading.is_some(),
            lease: LeaseView {
                holder: l.holder.clone(),
                epoch: l.epoch,
                since: l.since.map(rfc3339),
                expires_at: l.expires_at.map(rfc3339),
                live: l.live,
            },
            nodes: nodes.into_values().collect(),
            raw: l.clone(),
        }
    }

    /// The nodes seen within [`SEEN_WITHIN`] of `now`.
    pub fn live_nodes(&self, now: UnixTime) -> usize {
        self.nodes
            .iter()
            .filter(|n| n.seen_at.is_some_and(|t| now - t <= SEEN_WITHIN))
            .count()
    }

    /// The `status` lines: who leads since when (or that nobody does), then each node's count of
    /// current certificates, naming those it lags behind on.
    pub fn status_text(&self, now: UnixTime) -> String {
        let l = &self.raw;
        let holder = l.holder.as_deref().unwrap_or("nobody");
        let me = if self.leading {
            " (this instance)".to_string()
        } else {
            format!("; this is {}", self.node)
        };
        let lead = match (l.live, l.since) {
            (true, Some(since)) => format!(
                "{holder} leads (epoch {}) since {} ({}){me}",
                l.epoch,
                rfc3339(since),
                human(since - now)
            ),
            (true, None) => format!("{holder} leads (epoch {}){me}", l.epoch),
            (false, _) if l.holder.is_none() => format!("no live leader (nobody led yet){me}"),
            (false, _) => format!(
                "no live leader ({holder} held epoch {} until {}){me}",
                l.epoch,
                l.expires_at.map_or("-".into(), rfc3339)
            ),
        };
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| {
                let current = n.of - n.lagging.len();
                let mut s = format!("{} {current}/{}", n.name, n.of);
                if n.lagging.is_empty() {
                    s.push_str(" current");
                } else {
                    s.push_str(&format!(" (behind: {})", n.lagging.join(", ")));
                }
                match n.seen_at {
                    Some(t) if now - t > SEEN_WITHIN => {
                        s.push_str(&format!(" (not seen for {})", human(now - t)));
                    }
                    None => s.push_str(" (never seen)"),
                    Some(_) => {}
                }
                s
            })
            .collect();
        format!("\nfleet: {lead}\nnodes: {}\n", nodes.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::records;

    fn facts(installed: &[(&str, &str, &str)]) -> FleetFacts {
        FleetFacts {
            node: "node-2".into(),
            leading: None,
            lease: LeaseFacts {
                holder: Some("node-1".into()),
                epoch: 3,
                since: Some(1000),
                expires_at: Some(1010),
                live: true,
            },
            nodes: vec![("node-1".into(), 1250), ("node-2".into(), 800)],
            installed: installed
                .iter()
                .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
                .collect(),
        }
    }

    #[test]
    fn a_node_behind_the_store_lags_on_that_certificate() {
        let records = records();
        let with_cert: Vec<(&str, &str)> = records
            .iter()
            .filter_map(|r| r.cert.as_ref().map(|c| (r.id.as_str(), c.serial.as_str())))
            .collect();
        assert!(with_cert.len() >= 2, "fixtures with certificates");
        let mut installed = Vec::new();
        for (id, serial) in &with_cert {
            installed.push(("node-1", *id, *serial));
            installed.push(("node-3", *id, *serial));
        }
        // node-2 holds an older serial of the first one and nothing of the others.
        installed.push(("node-2", with_cert[0].0, "OLD"));
        installed.push(("node-1", "pruned.test", "01"));
        let facts = facts(&installed);
        let view = FleetView::new(&facts, &records);
        let v = serde_json::to_value(&view).unwrap();
        assert_eq!(v["node"], "node-2");
        assert_eq!(v["leading"], false);
        assert_eq!(v["lease"]["holder"], "node-1");
        assert_eq!(v["lease"]["epoch"], 3);
        assert_eq!(v["lease"]["since"], "1970-01-01T00:16:40Z");
        assert_eq!(v["lease"]["live"], true);
        let names: Vec<&str> = view.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["node-1", "node-2", "node-3"], "seen or installing");
        assert_eq!(v["nodes"][0]["lagging"], serde_json::json!([]));
        assert!(v["nodes"][0]["installed"].get("pruned.test").is_none());
        let lagging: Vec<&str> = with_cert.iter().map(|(id, _)| *id).collect();
        assert_eq!(v["nodes"][1]["lagging"], serde_json::json!(lagging));
        assert_eq!(v["nodes"][1]["installed"][with_cert[0].0], "OLD");
        assert!(v["nodes"][2]["last_seen"].is_null());
        assert_eq!(
            view.live_nodes(1000 + SEEN_WITHIN),
            1,
            "node-2 seen too long ago"
        );
        let text = view.status_text(1300);
        let n = with_cert.len();
        assert!(
            text.contains(
                "fleet: node-1 leads (epoch 3) since 1970-01-01T00:16:40Z (5m ago); this is node-2"
            ),
            "{text}"
        );
        assert!(text.contains(&format!("node-1 {n}/{n} current,")), "{text}");
        assert!(
            text.contains(&format!(
                "node-2 0/{n} (behind: {}) (not seen for 8m)",
                lagging.join(", ")
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!("node-3 {n}/{n} current (never seen)")),
            "{text}"
        );
    }

    #[test]
    fn no_live_leader_is_a_line_of_its_own() {
        let mut f = facts(&[]);
        f.lease.live = false;
        let view = FleetView::new(&f, &records());
        let text = view.status_text(1300);
        assert!(
            text.contains(
                "fleet: no live leader (node-1 held epoch 3 until 1970-01-01T00:16:50Z); this is node-2"
            ),
            "{text}"
        );
        f.lease.holder = None;
        f.leading = None;
        assert!(FleetView::new(&f, &records())
            .status_text(1300)
            .contains("no live leader (nobody led yet)"));
        let mut f = facts(&[]);
        f.leading = Some(3);
        f.node = "node-1".into();
        let view = FleetView::new(&f, &records());
        assert!(view.leading);
        assert!(view.status_text(1300).contains(
            "node-1 leads (epoch 3) since 1970-01-01T00:16:40Z (5m ago) (this instance)"
        ));
    }
}
