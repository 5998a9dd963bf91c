//! A record's bytes in the `records` tree: JSON carrying `schema_version`, and the refusal of
//! one this build cannot read.

use haproxy_acme_state::{Record, RECORD_SCHEMA_VERSION};

use crate::store::StoreError;

pub(crate) fn encode(r: &Record) -> Vec<u8> {
    serde_json::to_vec(r).expect("a record always serializes")
}

pub(crate) fn decode(id: &str, bytes: &[u8]) -> Result<Record, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt {
        id: id.into(),
        detail,
    };
    /// Only the version, to explain a record this build cannot read.
    #[derive(serde::Deserialize)]
    struct Version {
        schema_version: Option<u64>,
    }
    let version = |bytes: &[u8]| {
        serde_json::from_slice::<Version>(bytes)
            .ok()
            .and_then(|v| v.schema_version)
            .unwrap_or(0)
    };
    let wrong_version = |v: u64| v == 0 || v > u64::from(RECORD_SCHEMA_VERSION);
    let explain =
        |v: u64| format!("schema_version {v}, this build reads 1..={RECORD_SCHEMA_VERSION}");
    // One parse on the common path (start-up reads every record).
    match serde_json::from_slice::<Record>(bytes) {
        Ok(r) if wrong_version(u64::from(r.schema_version)) => {
            Err(corrupt(explain(u64::from(r.schema_version))))
        }
        Ok(r) => Ok(r),
        Err(e) => match version(bytes) {
            v if wrong_version(v) => Err(corrupt(explain(v))),
            _ => Err(corrupt(e.to_string())),
        },
    }
}
