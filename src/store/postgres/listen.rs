//! The record-change notifications of the other instances (`LISTEN haproxy_acme`), on a
//! connection of their own that is opened again after PostgreSQL restarts. Each time `LISTEN`
//! is in effect (the first connection included) the listener sends [`Notice::CatchUp`]: the
//! receiver then reads everything, so no change made before that notice goes unseen (neither
//! one made while the connection was down, nor one made between `listen()` and the first
//! `LISTEN`).

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::{error_chain, PgStore, NOTIFY_CHANNEL};

/// What another instance changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// The record of this id (and its certificate or key).
    Record(String),
    /// The certificates added at runtime.
    Added,
    /// The lease was given up: try to take it now.
    Lease,
    /// Many records, or notifications may have been missed: read them all.
    CatchUp,
}

/// How long the listener waits before connecting again.
const RECONNECT: Duration = Duration::from_secs(1);

impl PgStore {
    /// Starts listening; notices of this very process's own writes are left out. The first
    /// notice is a [`Notice::CatchUp`] once `LISTEN` is in effect. Ends when the receiver is
    /// dropped.
    pub fn listen(&self) -> mpsc::UnboundedReceiver<Notice> {
        let (tx, rx) = mpsc::unbounded_channel();
        let url = self.url().to_string();
        let me = self.instance().to_string();
        tokio::spawn(async move {
            while !tx.is_closed() {
                match listen_once(&url, &me, &tx).await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "the PostgreSQL notification connection was lost; connecting again");
                    }
                }
                tokio::time::sleep(RECONNECT).await;
            }
        });
        rx
    }
}

/// One connection's life: `Ok` when the receiver is gone, `Err` when the connection is.
async fn listen_once(
    url: &str,
    me: &str,
    tx: &mpsc::UnboundedSender<Notice>,
) -> Result<(), String> {
    let config = super::pg_config(url).map_err(|e| error_chain(&e))?;
    let (client, mut connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| error_chain(&e))?;
    let (msg_tx, mut msg_rx) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                    if msg_tx.send(n.payload().to_string()).is_err() {
                        return "receiver gone".to_string();
                    }
                }
                Ok(_) => {}
                Err(e) => return error_chain(&e),
            }
        }
        "connection closed".to_string()
    });
    client
        .batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}"))
        .await
        .map_err(|e| error_chain(&e))?;
    if tx.send(Notice::CatchUp).is_err() {
        return Ok(());
    }
    // Ends when the connection does, or at once when the receiver is dropped (not only at the
    // next notification: the connection is not kept open for nobody).
    while let Some(payload) = tokio::select! {
        p = msg_rx.recv() => p,
        _ = tx.closed() => return Ok(()),
    } {
        let Some((from, what)) = payload.split_once('\t') else {
            continue;
        };
        if from == me && what != "lease" {
            continue;
        }
        let notice = match what {
            "*" => Notice::CatchUp,
            "added" => Notice::Added,
            "lease" => Notice::Lease,
            id => Notice::Record(id.to_string()),
        };
        if tx.send(notice).is_err() {
            return Ok(());
        }
    }
    drop(client);
    Err(driver.await.unwrap_or_else(|e| e.to_string()))
}
