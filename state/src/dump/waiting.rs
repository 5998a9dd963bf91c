//! What the daemon is waiting for (the store, the certificate directory, HAProxy's runtime API,
//! the CA), as the dump's `waiting_for` and the `status` section show it. The daemon keeps these
//! in memory (a full disk cannot record its own error), so an offline dump has none.

use serde::Serialize;

use super::{human, rfc3339};
use crate::UnixTime;

/// One thing the daemon waits for, as it hands it to the dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    /// Its key: `store`, `certs_dir`, `runtime_api`, `ca`.
    pub part: &'static str,
    /// What it is, for people ("the store (DATA_DIR)").
    pub what: &'static str,
    /// Failing since.
    pub since: UnixTime,
    /// The latest error, and when it was seen.
    pub error: String,
    pub error_at: UnixTime,
}

/// One entry of the dump's `waiting_for`.
#[derive(Debug, Clone, Serialize)]
pub struct WaitingView {
    pub part: &'static str,
    pub since: String,
    pub error: String,
    pub error_at: String,
}

/// The dump's `waiting_for`.
pub fn waiting_views(waiting: &[Waiting]) -> Vec<WaitingView> {
    waiting
        .iter()
        .map(|w| WaitingView {
            part: w.part,
            since: rfc3339(w.since),
            error: w.error.clone(),
            error_at: rfc3339(w.error_at),
        })
        .collect()
}

/// The `status` section: nothing when nothing is awaited, else a "Waiting for:" heading and one
/// line per part (`color`: red on a terminal). An error not seen again for a minute says when it
/// was (the part is looked at again by the next attempt that needs it).
pub fn waiting_text(waiting: &[Waiting], now: UnixTime, color: bool) -> String {
    if waiting.is_empty() {
        return String::new();
    }
    let mut out = String::from("\nWaiting for:\n");
    for w in waiting {
        let seen = match now - w.error_at {
            quiet if quiet >= 60 => format!(" (last seen {} ago)", human(quiet)),
            _ => String::new(),
        };
        let line = format!(
            "  {} since {} ({}): {}{seen}",
            w.what,
            rfc3339(w.since),
            human(now - w.since),
            w.error.trim()
        );
        if color {
            out.push_str(&format!("\x1b[31m{line}\x1b[0m\n"));
        } else {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_full() -> Waiting {
        Waiting {
            part: "store",
            what: "the store (DATA_DIR)",
            since: 60,
            error: "store write failed: No space left on device\n".into(),
            error_at: 90,
        }
    }

    #[test]
    fn a_section_only_when_waiting_one_line_per_part() {
        assert_eq!(waiting_text(&[], 100, false), "");
        let ca = Waiting {
            part: "ca",
            what: "the ACME CA",
            since: 0,
            error: "connection refused".into(),
            error_at: 30,
        };
        let t = waiting_text(&[store_full(), ca], 100, false);
        assert_eq!(
            t,
            "\nWaiting for:\n  the store (DATA_DIR) since 1970-01-01T00:01:00Z (40s): store write \
             failed: No space left on device\n  the ACME CA since 1970-01-01T00:00:00Z (100s): \
             connection refused (last seen 70s ago)\n"
        );
        assert!(waiting_text(&[store_full()], 200, true).contains("\x1b[31m"));
    }

    #[test]
    fn the_dump_entry_names_the_part_its_start_and_error() {
        let v = serde_json::to_value(waiting_views(&[store_full()])).unwrap();
        assert_eq!(
            v,
            serde_json::json!([{
                "part": "store",
                "since": "1970-01-01T00:01:00Z",
                "error": "store write failed: No space left on device\n",
                "error_at": "1970-01-01T00:01:30Z"
            }])
        );
    }
}
