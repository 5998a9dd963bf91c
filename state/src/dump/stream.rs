//! The dump written as it is read: the same bytes as `serde_json::to_string_pretty` of a
//! [`Dump`](super::Dump) (plus the final newline `state dump` prints), produced one certificate at
//! a time, so a dump of any size needs the memory of one record.

use super::fleet::FleetView;
use super::{rfc3339, waiting_views, CertView, Waiting, DUMP_SCHEMA_VERSION};
use crate::{Record, UnixTime};

/// Writes a dump in pieces: [`head`](DumpWriter::head), then each record in id order
/// ([`record`](DumpWriter::record)), then [`tail`](DumpWriter::tail).
pub struct DumpWriter {
    now: UnixTime,
    empty: bool,
}

/// `v` pretty-printed as JSON, its lines after the first indented by `indent` (JSON strings hold
/// no raw newline, so every newline is between tokens).
fn nested(v: &impl serde::Serialize, indent: &str) -> String {
    serde_json::to_string_pretty(v)
        .expect("the dump always serializes")
        .replace('\n', &format!("\n{indent}"))
}

impl DumpWriter {
    pub fn new(now: UnixTime) -> DumpWriter {
        DumpWriter { now, empty: true }
    }

    /// Up to the opening of the certificates' array.
    pub fn head(&self) -> String {
        format!(
            "{{\n  \"schema_version\": {DUMP_SCHEMA_VERSION},\n  \"generated_at\": {},\n  \"certificates\": [",
            serde_json::to_string(&rfc3339(self.now)).expect("a string serializes")
        )
    }

    /// One certificate (records come in id order, as the dump sorts them).
    pub fn record(&mut self, r: &Record) -> String {
        let sep = if self.empty { "\n    " } else { ",\n    " };
        self.empty = false;
        sep.to_string() + &nested(&CertView::from_record(r, self.now), "    ")
    }

    /// The rest: what the daemon waits for, a fleet's view, and the final newline.
    pub fn tail(&self, waiting: &[Waiting], fleet: Option<&FleetView>) -> String {
        let mut out = String::from(if self.empty { "]" } else { "\n  ]" });
        out.push_str(",\n  \"waiting_for\": ");
        out.push_str(&nested(&waiting_views(waiting), "  "));
        if let Some(f) = fleet {
            out.push_str(",\n  \"fleet\": ");
            out.push_str(&nested(f, "  "));
        }
        out.push_str("\n}\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::fleet::{FleetFacts, LeaseFacts};
    use super::*;

    fn whole(records: &[Record], waiting: &[Waiting], fleet: Option<&FleetView>) -> String {
        let mut w = DumpWriter::new(1000 + 70 * 86_400);
        let mut out = w.head();
        for r in records {
            out.push_str(&w.record(r));
        }
        out + &w.tail(waiting, fleet)
    }

    #[test]
    fn the_streamed_dump_is_the_dump() {
        let now = 1000 + 70 * 86_400;
        let mut records = crate::fixtures::records();
        records.sort_by(|a, b| a.id.cmp(&b.id));
        let waiting = [Waiting {
            part: "haproxy",
            what: "HAProxy's runtime API",
            since: 5,
            error: "refused \"x\"".into(),
            error_at: 6,
        }];
        let facts = FleetFacts {
            node: "n1".into(),
            leading: Some(3),
            lease: LeaseFacts::default(),
            nodes: vec![("n1".into(), 10)],
            installed: vec![("n1".into(), "c-issued.test".into(), "0A1B".into())],
        };
        let fleet = FleetView::new(&facts, &records);
        for (records, waiting, fleet) in [
            (&records[..], &waiting[..], Some(&fleet)),
            (&records[..], &[][..], None),
            (&[][..], &waiting[..], None),
            (&[][..], &[][..], Some(&fleet)),
        ] {
            let mut d = super::super::dump(records, now);
            d.waiting_for = waiting_views(waiting);
            d.fleet = fleet.cloned();
            let expected = serde_json::to_string_pretty(&d).unwrap() + "\n";
            assert_eq!(whole(records, waiting, fleet), expected);
        }
    }
}
