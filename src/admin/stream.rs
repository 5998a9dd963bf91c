//! The admin endpoint's answers that are not built whole: the `state dump` of every certificate
//! written as the store is scanned (a response body fed by a channel, in chunks of
//! [`CHUNK`] bytes, so the daemon's memory stays flat whatever the number of certificates), and
//! the `status` screens and the `status --check` report read from the daemon's view instead of
//! the store.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use haproxy_acme_state::dump::{status_table_of, DumpWriter, Waiting};
use haproxy_acme_state::{attention, UnixTime};
use hyper::body::{Bytes, Frame};
use tokio::sync::mpsc;

use crate::store::view::View;
use crate::store::Store;

/// What a chunk of the streamed dump holds at least (the last one: the rest).
pub const CHUNK: usize = 64 * 1024;

/// A response body whose chunks come through a channel; an error ends the response abruptly
/// (the client sees a truncated answer, not a well-formed partial dump).
pub struct ChannelBody(mpsc::Receiver<io::Result<Bytes>>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.0.poll_recv(cx).map(|c| c.map(|r| r.map(Frame::data)))
    }
}

/// The dump of every record of `store` (one whose `scan` visits on a blocking thread, as sled
/// does), written while it is scanned.
pub fn dump(store: Arc<dyn Store>, waiting: Vec<Waiting>, now: UnixTime) -> ChannelBody {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let writer = DumpWriter::new(now);
        let state = Arc::new(Mutex::new((writer.head(), writer, true)));
        let visiting = state.clone();
        let into = tx.clone();
        let scanned = store
            .scan(Box::new(move |r| {
                let mut s = visiting
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let (buf, writer, open) = &mut *s;
                if !*open {
                    return;
                }
                let piece = writer.record(&r);
                buf.push_str(&piece);
                if buf.len() >= CHUNK {
                    let chunk = Bytes::from(std::mem::take(buf));
                    // The client went away: the rest of the scan writes nothing.
                    *open = into.blocking_send(Ok(chunk)).is_ok();
                }
            }))
            .await;
        let (rest, open) = {
            let mut s = state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let (buf, writer, open) = &mut *s;
            (std::mem::take(buf) + &writer.tail(&waiting, None), *open)
        };
        if !open {
            return;
        }
        let last = match scanned {
            Ok(()) => Ok(Bytes::from(rest)),
            Err(e) => Err(io::Error::other(e)),
        };
        let _ = tx.send(last).await;
    });
    ChannelBody(rx)
}

/// The `status` table of certificate `id` in `view` (`None`: no such certificate).
pub fn status_table(view: &View, id: &str, now: UnixTime, color: bool) -> Option<String> {
    let map = view.read();
    let (id, seen) = map.get(id)?;
    Some(status_table_of([(id, &seen.summary)], now, color))
}

/// The `status` screen of every certificate in `view` (`state::dump::status_screen`: the table
/// of every one if `all` or up to 100, else a summary).
pub fn status_screen(view: &View, now: UnixTime, color: bool, all: bool) -> String {
    let map = view.read();
    haproxy_acme_state::dump::status_screen(View::summaries(&map), now, color, all)
}

/// The `status --check` report from `view`: the configured certificates counted there, and only
/// those it says need attention read from `store` (`attention::problems` describes a condition
/// from the whole record: the drift's serials, the certificate's own). A record that changed
/// in between is judged as read.
pub async fn check_report(
    view: &View,
    store: &dyn Store,
    waiting: &[Waiting],
    now: UnixTime,
) -> Result<String, crate::store::StoreError> {
    let (configured, ids) = {
        let map = view.read();
        let summaries = View::summaries(&map).filter(|(_, s)| !s.unconfigured);
        let configured = summaries.clone().count();
        let ids: Vec<String> = summaries
            .filter(|(_, s)| s.needs_attention(now))
            .map(|(id, _)| id.to_string())
            .collect();
        (configured, ids)
    };
    let mut records = Vec::with_capacity(ids.len());
    for id in &ids {
        records.extend(store.get(id).await?);
    }
    let report = attention::check_report_of(configured, &records, now);
    Ok(attention::with_waiting(report, waiting, now))
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;
    use haproxy_acme_state::{KeyType, Record};

    #[tokio::test]
    async fn the_streamed_dump_is_the_whole_one() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(crate::store::sled::SledStore::open(dir.path()).unwrap());
        let waiting = vec![Waiting {
            part: "store",
            what: "the store (DATA_DIR)",
            since: 3,
            error: "full".into(),
            error_at: 4,
        }];
        for n in [0, 1, 3, 2000] {
            let records = (0..n)
                .map(|i| Record::new(vec![format!("c{i}.test")], KeyType::EcdsaP256, i))
                .collect();
            store.put_all(records).await.unwrap();
            let whole = crate::admin::dump_json(store.as_ref(), None, &waiting, None, 99)
                .await
                .unwrap()
                .unwrap();
            let body = dump(store.clone(), waiting.clone(), 99);
            let streamed = body.collect().await.unwrap().to_bytes();
            assert_eq!(String::from_utf8_lossy(&streamed), whole, "{n} records");
        }
    }

    /// `n` installed 90-day certificates issued at 0, every third failing for good, one no
    /// longer configured.
    fn records(n: usize) -> Vec<Record> {
        use haproxy_acme_state::machine::FailureReport;
        use haproxy_acme_state::{apply, CertMeta, Event, FailureKind, Step};
        (0..n)
            .map(|i| {
                let r = Record::new(vec![format!("c{i:03}.test")], KeyType::EcdsaP256, 0);
                let meta = CertMeta {
                    serial: format!("{i:X}"),
                    not_before: 0,
                    not_after: 90 * 86_400,
                    fingerprint: "f".into(),
                    issued_at: 0,
                };
                let r = apply(&r, Event::OrderCreated { url: "u".into() }, 0);
                let r = apply(&r, Event::CertificateStored { meta }, 0);
                let fingerprint = "f".into();
                let mut r = apply(&r, Event::Installed { fingerprint }, 0);
                if i % 3 == 0 {
                    let report = FailureReport {
                        step: Step::Order,
                        kind: FailureKind::Permanent,
                        error: "rejectedIdentifier".into(),
                        retry_after: None,
                        jitter_permille: 0,
                        order_dead: false,
                    };
                    r = apply(&r, Event::Failed(report), 5);
                }
                r.unconfigured = i == 1;
                r
            })
            .collect()
    }

    #[tokio::test]
    async fn the_daemons_screens_from_its_view_are_the_offline_ones_from_the_records() {
        let now = 86_400;
        for n in [3, 100, 101, 150] {
            let memory: Arc<dyn Store> = Arc::new(crate::store::memory::MemoryStore::new());
            memory.put_all(records(n)).await.unwrap();
            let (_viewed, view) = crate::store::view::Viewed::filled(memory.clone())
                .await
                .unwrap();
            let store = memory.as_ref();
            for all in [false, true] {
                let offline = crate::admin::status_text(store, &[], None, (false, all), now)
                    .await
                    .unwrap();
                let daemon = status_screen(&view, now, false, all);
                assert!(
                    offline.starts_with(&daemon),
                    "{n} {all}\n{daemon}\n{offline}"
                );
                let summary = offline.ends_with("`status ID` for one\n");
                assert_eq!(summary, n > 100 && !all, "{n} {all}\n{offline}");
            }
            for at in [now, 200 * 86_400] {
                let whole = crate::admin::check_text(store, None, &[], at)
                    .await
                    .unwrap();
                let viewed = crate::admin::check_text(store, Some(&view), &[], at)
                    .await
                    .unwrap();
                assert_eq!(viewed, whole);
                // A line per problem: failing, then expired too (the configured ones).
                let failing = n.div_ceil(3);
                let problems = if at == now { failing } else { failing + n - 1 };
                assert_eq!(whole.lines().count(), 1 + problems, "{whole}");
            }
        }
    }
}
