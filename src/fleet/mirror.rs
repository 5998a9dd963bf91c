//! What every instance of a fleet does, leader or not: keeps its responders' challenges and its
//! own HAProxy in step with the shared store. A record another instance changed arrives as a
//! notification; a full pass at start, every [`CATCH_UP`], and after the notification
//! connection was lost catches up what a notification did not bring. Each installed serial is
//! noted in the store per node (`status` shows a node that lags), and each catch-up notes the
//! node as seen.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use haproxy_acme_state::Record;
use tokio::sync::{mpsc, watch, Notify};

use crate::installer::Haproxy;
use crate::reconciler::tokens::sync_tokens;
use crate::reconciler::Control;
use crate::responder::Tokens;
use crate::store::postgres::listen::Notice;
use crate::store::postgres::PgStore;
use crate::store::Store;

/// A pass over the records changed since the last one at least this often, even with no
/// notification; a pass over every record (which also finds those deleted) every
/// [`FULL_PASS`], at start and after the notification connection was lost.
pub const CATCH_UP: Duration = Duration::from_secs(30);
pub const FULL_PASS: Duration = Duration::from_secs(6 * 3600);
/// How far back (ms, PostgreSQL's clock) each pass reads again what the last one read.
const WATERMARK_SLACK_MS: i64 = 5_000;
/// After an install failed (HAProxy down), the next pass comes this soon.
const RETRY: Duration = Duration::from_secs(2);

pub struct Mirror {
    pub pg: PgStore,
    pub tokens: Tokens,
    pub haproxy: Arc<dyn Haproxy>,
    /// The leader's reconciler, told of records and additions other instances changed.
    pub control: Control,
    pub lease_given_up: Arc<Notify>,
    /// The record last seen of each id with an order in flight (the challenges it published).
    seen: HashMap<String, Record>,
    /// PostgreSQL's time of the last pass, less a slack.
    watermark: Option<i64>,
    /// The serial this node's HAProxy serves for each id, as last installed or observed.
    installed: HashMap<String, String>,
    /// An install failed: pass again soon.
    behind: bool,
}

impl Mirror {
    pub fn new(
        pg: PgStore,
        tokens: Tokens,
        haproxy: Arc<dyn Haproxy>,
        control: Control,
        lease_given_up: Arc<Notify>,
    ) -> Mirror {
        Mirror {
            pg,
            tokens,
            haproxy,
            control,
            lease_given_up,
            seen: HashMap::new(),
            installed: HashMap::new(),
            watermark: None,
            behind: false,
        }
    }

    /// Runs until `shutdown`.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut notices: mpsc::UnboundedReceiver<Notice> = self.pg.listen();
        self.catch_up(true).await;
        let mut last_full = Instant::now();
        // A deadline, not a sleep per wait: notifications coming more often than a pass is due
        // do not put it off (an install to retry waits RETRY, however busy the fleet).
        let mut next_pass = Instant::now() + CATCH_UP;
        loop {
            if self.behind {
                next_pass = next_pass.min(Instant::now() + RETRY);
            }
            tokio::select! {
                n = notices.recv() => match n {
                    Some(Notice::Record(id)) => {
                        self.control.wake(id.clone());
                        match self.pg.get(&id).await {
                            Ok(r) => self.sync(&id, r).await,
                            Err(e) => {
                                tracing::warn!(cert = %id, error = %e, "cannot read a changed record");
                                self.behind = true;
                            }
                        }
                    }
                    Some(Notice::Added) => self.control.reload(),
                    Some(Notice::Lease) => self.lease_given_up.notify_one(),
                    Some(Notice::CatchUp) => {
                        self.control.reload();
                        self.catch_up(true).await;
                        last_full = Instant::now();
                    }
                    None => return,
                },
                _ = tokio::time::sleep_until(next_pass.into()) => {
                    let full = last_full.elapsed() >= FULL_PASS;
                    self.catch_up(full).await;
                    if full {
                        last_full = Instant::now();
                    }
                    next_pass = Instant::now() + CATCH_UP;
                }
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Reads the records changed since the last pass (`full`: every record, and forgets those
    /// gone) and brings the responders and this node's HAProxy in line.
    async fn catch_up(&mut self, full: bool) {
        self.behind = false;
        // This node is alive (`status`, `haproxy_acme_fleet_nodes`).
        if let Err(e) = (&self.pg as &dyn Store).probe_write(0).await {
            tracing::debug!(error = %e, "cannot note this node as seen");
        }
        let since = if full { None } else { self.watermark };
        let (records, db_now) = match self.pg.changed_since(since).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the store to catch up");
                self.behind = true;
                return;
            }
        };
        if full {
            let present: HashSet<&str> = records.iter().map(|r| r.id.as_str()).collect();
            let gone: Vec<String> = self
                .seen
                .keys()
                .chain(self.installed.keys())
                .filter(|id| !present.contains(id.as_str()))
                .cloned()
                .collect::<HashSet<String>>()
                .into_iter()
                .collect();
            for id in gone {
                self.sync(&id, None).await;
            }
        }
        // What HAProxy serves for the certificates not known to be in line, in one batch.
        let unknown: Vec<&Record> = records
            .iter()
            .filter(|r| {
                r.cert
                    .as_ref()
                    .is_some_and(|m| self.installed.get(&r.id) != Some(&m.serial))
            })
            .collect();
        if !unknown.is_empty() {
            let ids: Vec<&str> = unknown.iter().map(|r| r.id.as_str()).collect();
            if let Ok(observed) = self.haproxy.observe(&ids).await {
                for (r, o) in unknown.iter().zip(observed) {
                    let serial = &r.cert.as_ref().expect("filtered").serial;
                    if o.served.as_ref() == Some(serial) && o.file.as_ref() == Some(serial) {
                        self.installed.insert(r.id.clone(), serial.clone());
                        if let Err(e) = self.pg.note_installed(&r.id, serial).await {
                            tracing::debug!(cert = %r.id, error = %e, "cannot note the installed serial");
                        }
                    }
                }
            }
        }
        for r in records {
            let id = r.id.clone();
            self.sync(&id, Some(r)).await;
        }
        // A change committed just before this read may carry an earlier time: read it again.
        self.watermark = Some(db_now - WATERMARK_SLACK_MS);
    }

    /// Brings the challenges and the installed certificate of `id` in line with `record`.
    async fn sync(&mut self, id: &str, record: Option<Record>) {
        sync_tokens(&self.tokens, self.seen.get(id), record.as_ref());
        let Some(record) = record else {
            self.seen.remove(id);
            if self.installed.remove(id).is_some() {
                // Pruned by the leader: off this node's HAProxy too.
                if let Err(e) = self.haproxy.remove(id).await {
                    tracing::warn!(cert = %id, error = %e, "cannot remove a pruned certificate");
                }
            }
            return;
        };
        if let Some(meta) = record.cert.clone() {
            if self.installed.get(id) != Some(&meta.serial) {
                match self.install(id, &meta).await {
                    Ok(()) => {
                        tracing::info!(cert = %id, serial = %meta.serial, "installed on this node");
                        self.installed.insert(id.to_string(), meta.serial.clone());
                        // (Noted in the store by the installer, a `NotingHaproxy`.)
                    }
                    Err(e) => {
                        tracing::warn!(cert = %id, error = %e, "cannot install on this node; trying again");
                        self.behind = true;
                    }
                }
            }
        }
        if record.order().is_some() {
            self.seen.insert(id.to_string(), record);
        } else {
            self.seen.remove(id);
        }
    }

    async fn install(&self, id: &str, meta: &haproxy_acme_state::CertMeta) -> Result<(), String> {
        let (chain, key) = match self.pg.certificate(id).await {
            Ok(Some(c)) => c,
            Ok(None) => return Err("the store has no certificate for it".into()),
            Err(e) => return Err(e.to_string()),
        };
        self.haproxy
            .install(id, &chain, &key, meta)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}
