//! The daemon's start-up and shutdown (`haproxy-acme run`): which part starts when, and what
//! each is handed. Start order: responders (HTTP-01, and TLS-ALPN-01 when set) bound and serving → store opened → default
//! certificate → admin socket (and `ADMIN_LISTEN`) → wanted set brought into the store → healthy
//! → wait for HAProxy's runtime API → reconciler. Shutdown: the reconciler lets in-flight steps
//! reach a durable point, then the servers stop and the admin socket is removed.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::watch;

use crate::acme::Ca;
use crate::acme::LazyAcme;
use crate::admin::{self, Admin};
use crate::clock::{Dice, SystemClock};
use crate::config::{Config, WantedSet};
use crate::fleet::mirror::Mirror;
use crate::fleet::{Leader, NotingHaproxy};
use crate::health::Health;
use crate::installer::{Haproxy, Installer};
use crate::reconciler::{Parts, Reconciler, StartError, Tuning};
use crate::responder::{self, Tokens};
use crate::store::postgres::seal::SealKey;
use crate::store::postgres::PgStore;
use crate::store::sled::SledStore;
use crate::store::view::Viewed;
use crate::store::watched::Watched;
use crate::store::{Store, StoreError};

/// What stops the daemon and what asks it to re-read its configuration.
pub struct Triggers {
    /// Turns true on SIGTERM/SIGINT.
    pub shutdown: watch::Receiver<bool>,
    /// Bumped by SIGHUP; the daemon bumps it too when DOMAINS_FILE changes.
    pub reload: Arc<watch::Sender<u64>>,
}

/// Why the daemon did not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The wanted set is invalid or empty (exit code 2).
    #[error("{0}")]
    Config(crate::config::ConfigError),
    /// The store is damaged or does not know certificates CERTS_DIR holds (exit code 4).
    #[error("{0}")]
    StoreDamaged(StoreError),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl From<StoreError> for DaemonError {
    fn from(e: StoreError) -> DaemonError {
        match e {
            StoreError::Damaged { .. } => DaemonError::StoreDamaged(e),
            e => DaemonError::Other(e.into()),
        }
    }
}

/// Runs the daemon until `triggers.shutdown` turns true.
pub async fn run(
    config: Config,
    wanted: WantedSet,
    triggers: Triggers,
    early: Option<EarlyStore>,
) -> Result<(), DaemonError> {
    let Triggers { shutdown, reload } = triggers;
    // The configured profiles are offered by the CA (a CA not reached lets this pass).
    crate::acme::directory::check_profiles(&config, wanted.initial())
        .await
        .map_err(DaemonError::Config)?;
    // Subscribed before the wanted set is read: a SIGHUP during start-up is not lost.
    let reload_rx = reload.subscribe();
    // The responder listens before anything else, so validation traffic always has a target.
    let listener = responder::bind(config.responder_listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on RESPONDER_LISTEN {} (port 80 needs root or \
                 CAP_NET_BIND_SERVICE; or pick another address that HAProxy forwards to)",
                config.responder_listen
            )
        })?;
    let tokens = Tokens::default();
    let responder_task = tokio::spawn(responder::serve(listener, tokens.clone(), shutdown.clone()));
    tracing::info!(listen = %config.responder_listen, "challenge responder listening");
    let tls_alpn_task = match config.tls_alpn_listen {
        None => None,
        Some(addr) => {
            let l = responder::tls_alpn::bind(addr)
                .await
                .with_context(|| format!("cannot listen on TLS_ALPN_LISTEN {addr}"))?;
            // Built here so a bad configuration stops the start, not the task.
            responder::tls_alpn::server_config(tokens.clone())
                .context("the TLS-ALPN-01 responder's TLS configuration")?;
            tracing::info!(listen = %addr, "TLS-ALPN-01 responder listening (acme-tls/1)");
            let serving = responder::tls_alpn::serve(l, tokens.clone(), shutdown.clone());
            Some(tokio::spawn(serving))
        }
    };

    let health = Arc::new(Health::default());
    let clock = Arc::new(SystemClock);
    let (backend, pg): (Arc<dyn Store>, Option<PgStore>) = match &config.fleet {
        Some(fleet) => {
            // DATA_DIR holds only the admin socket here; private like sled's.
            crate::store::private_dir(&config.data_dir)
                .with_context(|| format!("cannot create DATA_DIR {}", config.data_dir.display()))?;
            let pg = connect_waiting(fleet, shutdown.clone()).await?;
            tokens.set_fallback(Arc::new(pg.clone()));
            (Arc::new(pg.clone()), Some(pg))
        }
        None => {
            let sled = match early {
                Some(early) => early.take(&config.data_dir).await?,
                None => open_store_waiting(&config.data_dir).await?,
            };
            let sled = Arc::new(sled);
            sled.shed_pages();
            if sled.unmarked() {
                // A store with no marker to judge it by (new, restored, or DATA_DIR wiped):
                // refused if it lacks certificates CERTS_DIR holds, before anything is ordered.
                let now = crate::clock::unix_now();
                crate::recovery::check_certs_dir(sled.as_ref(), &config, wanted.initial(), now)
                    .await?;
                sled.seal().await?;
            }
            (sled, None)
        }
    };
    // Its write failures and recoveries go to the health registry (`status`, the dump).
    let store: Arc<dyn Store> = Arc::new(Watched::new(backend, health.clone(), clock.clone()));
    // One machine: every write goes through this process, so the view `status` and `/metrics`
    // read is kept by wrapping the store; the reconciler's start-up pass over every record
    // fills it (before the admin endpoint serves). A fleet's other nodes write the shared store
    // too: there, they read the store.
    let (store, view) = match &pg {
        Some(_) => (store, None),
        None => {
            let (viewed, view) = Viewed::empty(store);
            (Arc::new(viewed) as Arc<dyn Store>, Some(view))
        }
    };
    let installer = Installer::new(
        config.certs_dir.clone(),
        config.haproxy_certs_dir.clone(),
        config.haproxy_runtime_api.clone(),
    );
    if installer.prepare_certs_dir().map_err(anyhow::Error::new)? {
        tracing::info!(dir = %config.certs_dir.display(), "wrote the self-signed default certificate 000-default.pem");
    }
    let admin_listener = admin::bind(&config.data_dir).with_context(|| {
        format!(
            "cannot bind the admin socket {}",
            admin::socket_path(&config.data_dir).display()
        )
    })?;
    let admin_tcp = match config.admin_listen {
        None => None,
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on ADMIN_LISTEN {addr}"))?;
            tracing::info!(listen = %addr, "admin endpoint (read-only: state, status, healthz, metrics)");
            Some(l)
        }
    };
    match &config.haproxy_runtime_api {
        Some(a) => tracing::info!(runtime_api = %a, "installing through HAProxy's runtime API"),
        None => tracing::info!("HAPROXY_RUNTIME_API unset: writing certificate files only"),
    }
    // Handed to the reconciler, which takes it as it is unless certificates were added at
    // runtime or DOMAINS_FILE changed since; not kept twice (100,000 certificates are ~25 MiB
    // of names).
    let mut wanted = wanted;
    let initial = wanted.take_initial();
    let wanted = Arc::new(wanted);
    let config = Arc::new(config);
    let installer = Arc::new(installer);
    // A fleet notes each install per node (`status` shows a node that lags).
    let haproxy: Arc<dyn Haproxy> = match &pg {
        Some(pg) => Arc::new(NotingHaproxy::new(installer.clone(), pg.clone())),
        None => installer.clone(),
    };
    let acme = Arc::new(LazyAcme::new(config.clone(), store.clone()));
    let parts = {
        let (config, wanted, haproxy) = (config.clone(), wanted.clone(), haproxy.clone());
        let (clock, tokens, health) = (clock.clone(), tokens.clone(), health.clone());
        move |store: Arc<dyn Store>, ca: Arc<dyn Ca>| Parts {
            config: config.clone(),
            wanted: wanted.clone(),
            store,
            ca,
            haproxy: haproxy.clone(),
            clock: clock.clone(),
            dice: Dice::from_os(),
            tokens: tokens.clone(),
            health: health.clone(),
        }
    };
    let (control, inbox) = crate::reconciler::channel();
    // One machine: the reconciler, its wanted set checked now (an invalid one stops the
    // start); its pass over the store comes once the daemon is healthy. A fleet: the lease
    // decides when this instance runs it (`fleet`).
    let start_error = |e| match e {
        StartError::Config(e) => DaemonError::Config(e),
        StartError::Store(e) => e.into(),
    };
    let single = match &pg {
        Some(_) => None,
        None => {
            let reconciler = Reconciler::new_with(
                parts(store.clone(), acme.clone()),
                Tuning::for_config(&config),
                control.clone(),
            );
            let wanted = reconciler
                .wanted_now_from(initial)
                .await
                .map_err(start_error)?;
            Some((reconciler, wanted))
        }
    };
    // Healthy: validation traffic is answered, the store is open, the wanted set is valid and
    // the admin endpoint answers (its answers other than /healthz wait for the pass below,
    // which at 1,000,000 certificates takes seconds: BENCHMARKS.md, "Scale without scans").
    health.set_ready();
    let (passed, passed_rx) = watch::channel(pg.is_some());
    let lease_given_up = Arc::new(tokio::sync::Notify::new());
    let mirror_task = pg.as_ref().map(|pg| {
        let mirror = Mirror::new(
            pg.clone(),
            tokens.clone(),
            haproxy.clone(),
            control.clone(),
            lease_given_up.clone(),
        );
        tokio::spawn(mirror.run(shutdown.clone()))
    });
    // Held for the daemon's lifetime: dropping it stops the watch.
    let _watcher = match &config.domains_file {
        Some(file) => Some(
            crate::watch::watch_file(file, reload.clone())
                .with_context(|| format!("cannot watch DOMAINS_FILE {}", file.display()))?,
        ),
        None => None,
    };
    // Whether this instance leads, from the fleet's Leader to the admin endpoint.
    let (leading, leading_rx) = watch::channel(None);
    let admin_task = tokio::spawn(admin::serve(
        admin_listener,
        admin_tcp,
        Arc::new(Admin {
            store,
            config: config.clone(),
            wanted,
            control: control.clone(),
            health: health.clone(),
            clock: clock.clone(),
            acme,
            fleet: pg.as_ref().map(|pg| admin::fleet::FleetView {
                pg: pg.clone(),
                leading: leading_rx,
            }),
            view,
            passed: passed_rx,
        }),
        shutdown.clone(),
    ));
    let single = match single {
        None => None,
        Some((reconciler, wanted)) => match reconciler.start_with(wanted).await {
            Ok(started) => {
                tracing::info!(certificates = started.wanted(), directory = %config.acme_directory, "store in line with the configuration");
                let _ = passed.send(true);
                Some((reconciler, started))
            }
            Err(e) => {
                admin_task.abort();
                let _ = std::fs::remove_file(admin::socket_path(&config.data_dir));
                return Err(start_error(e));
            }
        },
    };
    // No `sleep` in a compose file: the daemon itself waits until HAProxy can route validation
    // traffic and take certificates, before it orders anything.
    let mut waiting = shutdown.clone();
    if installer
        .wait_for_runtime_api(&mut waiting, health.conditions())
        .await
    {
        match (single, pg) {
            (Some((reconciler, started)), _) => {
                reconciler.run(started, shutdown, reload_rx, inbox).await;
            }
            (None, Some(pg)) => {
                let fleet = config
                    .fleet
                    .as_ref()
                    .expect("a PostgreSQL store is a fleet's");
                let leader = Leader {
                    pg,
                    parts: Box::new(parts),
                    config: config.clone(),
                    health: health.clone(),
                    clock: clock.clone(),
                    control: control.clone(),
                    reload: reload.clone(),
                    lease_time: fleet.lease_time,
                    lease_given_up,
                    leading,
                };
                leader.run(inbox, shutdown).await;
            }
            (None, None) => unreachable!("either one machine or a fleet"),
        }
    }
    if let Some(t) = mirror_task {
        let _ = t.await;
    }
    let _ = tokio::join!(responder_task, admin_task);
    if let Some(t) = tls_alpn_task {
        let _ = t.await;
    }
    let _ = std::fs::remove_file(admin::socket_path(&config.data_dir));
    tracing::info!("stopped");
    Ok(())
}

/// Connects to a fleet's PostgreSQL store, waiting while it does not answer (the database may
/// start after us); a wrong key or a store of a newer version stops the start.
async fn connect_waiting(
    fleet: &crate::config::fleet::Fleet,
    mut shutdown: watch::Receiver<bool>,
) -> Result<PgStore, DaemonError> {
    let mut logged = false;
    loop {
        let key = SealKey::from_file(&fleet.store_key_file).map_err(anyhow::Error::msg)?;
        match PgStore::connect(fleet.postgres_url.expose(), key, &fleet.node_name).await {
            Ok(pg) => {
                tracing::info!(store = %fleet.postgres_url.redacted(), node = %fleet.node_name, "fleet store: PostgreSQL");
                return Ok(pg);
            }
            Err(e @ StoreError::Database(_)) => {
                if !logged {
                    tracing::warn!(store = %fleet.postgres_url.redacted(), error = %e, "waiting for PostgreSQL");
                    logged = true;
                }
            }
            Err(e) => return Err(DaemonError::Other(e.into())),
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            _ = shutdown.changed() => return Err(DaemonError::Other(anyhow::anyhow!("stopped while waiting for PostgreSQL"))),
        }
    }
}

/// The sled store opened on a thread of its own while `main` reads the configuration: sled's
/// open reads its log (at 1,000,000 certificates ~2 s, mostly I/O), the parse of DOMAINS_FILE
/// is CPU (~2 s there), and neither needs the other. Started for `run` only, and only when
/// DATA_DIR already holds a store and no fleet is set, so a configuration refused creates
/// nothing; a store refused (damaged, locked) is opened again the usual way and reported then.
pub struct EarlyStore {
    data_dir: std::path::PathBuf,
    /// `None` once taken.
    opening: Option<std::thread::JoinHandle<Result<SledStore, StoreError>>>,
}

impl EarlyStore {
    pub fn start(raw: &crate::cli::RawSettings) -> Option<EarlyStore> {
        let data_dir = raw.data_dir_or_default();
        if raw.is_fleet() || !SledStore::exists(&data_dir) {
            return None;
        }
        let dir = data_dir.clone();
        let opening = std::thread::Builder::new()
            .name("store-open".into())
            .spawn(move || SledStore::open(&dir))
            .ok()?;
        Some(EarlyStore {
            data_dir,
            opening: Some(opening),
        })
    }

    /// The store it opened, or, if it was refused or opened another DATA_DIR, the store
    /// opened the usual way.
    async fn take(mut self, data_dir: &Path) -> Result<SledStore, StoreError> {
        let same = self.data_dir == data_dir;
        let opening = self.opening.take();
        let opened = tokio::task::spawn_blocking(move || opening.map(|o| o.join())).await;
        match opened {
            Ok(Some(Ok(Ok(store)))) if same => Ok(store),
            // Dropped (and its lock let go) before the usual open.
            _ => open_store_waiting(data_dir).await,
        }
    }
}

impl Drop for EarlyStore {
    /// A start that stopped before the store was taken waits for the open and closes the
    /// store, rather than exit during sled's open.
    fn drop(&mut self) {
        if let Some(opening) = self.opening.take() {
            let _ = opening.join();
        }
    }
}

/// Opens the store for the daemon. A CLI command that found no daemon (`state dump` during a
/// restart) holds the lock for a moment: wait for it rather than fail, but not for long, since
/// another daemon on the same DATA_DIR holds it for good.
async fn open_store_waiting(data_dir: &Path) -> Result<SledStore, StoreError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match SledStore::open(data_dir) {
            Err(StoreError::Locked(_)) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}
