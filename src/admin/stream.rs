//! The admin endpoint's answers that are not built whole: the `state dump` of every certificate
//! written as the store is scanned (a response body fed by a channel, in chunks of
//! [`CHUNK`] bytes, so the daemon's memory stays flat whatever the number of certificates), and
//! the `status` screens read from the daemon's view instead of the store.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use haproxy_acme_state::dump::{status_table_of, DumpWriter, Waiting};
use haproxy_acme_state::UnixTime;
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

/// The `status` table of every certificate in `view`, or of certificate `id` only (`None`: no
/// such certificate).
pub fn status_table(view: &View, id: Option<&str>, now: UnixTime, color: bool) -> Option<String> {
    let map = view.read();
    Some(match id {
        None => status_table_of(View::summaries(&map), now, color),
        Some(id) => {
            let (id, seen) = map.get_key_value(id)?;
            status_table_of([(&**id, &seen.summary)], now, color)
        }
    })
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
}
