//! Entry point: parses the command line, validates the configuration, and runs the command.
//! Exit codes: 0 success, 1 runtime failure, 2 invalid configuration or usage.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use haproxy_acme::cli::{self, Command, DomainsCommand, ImportCommand, StateCommand};
use haproxy_acme::config::{CertId, Config, Need, WantedSet};
use haproxy_acme::installer::Installer;
use haproxy_acme::ops::{self, OpError};
use haproxy_acme::reconciler::{self, Shared};
use haproxy_acme::responder::{self, Tokens};
use haproxy_acme::store::{Store, StoreError};
use haproxy_acme::{admin, haproxy_snippet, import, signals};

fn main() -> ExitCode {
    let options = std::env::var("OPTIONS").ok();
    let cli = match cli::parse(std::env::args_os().collect(), options.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            if e.use_stderr() {
                if options.as_deref().is_some_and(|o| !o.trim().is_empty()) {
                    eprintln!(
                        "(OPTIONS={:?} is part of the command line)",
                        options.unwrap_or_default()
                    );
                }
                return ExitCode::from(2);
            }
            return ExitCode::SUCCESS;
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.settings.log_format.as_deref() {
        // One JSON object per line, for log collectors; fields (`cert`, ...) stay fields.
        Some("json") => logs.json().with_current_span(false).init(),
        // Colour only for a person at a terminal; plain text in files and pipes.
        _ => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }

    let need = match cli.command {
        Command::Run | Command::CheckConfig => Need::Daemon,
        Command::State { .. }
        | Command::Status
        | Command::HaproxyConfig
        | Command::Healthcheck
        | Command::Renew { .. }
        | Command::Retry { .. }
        | Command::Domains { .. }
        | Command::Import { .. } => Need::StoreOnly,
    };
    let (config, wanted) = match Config::from_raw(&cli.settings, need) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::CheckConfig if wanted.initial().is_empty() => {
            eprint!("{}", haproxy_acme::config::nothing_to_manage());
            return ExitCode::from(2);
        }
        Command::CheckConfig => {
            println!(
                "{}",
                serde_json::to_string_pretty(&haproxy_acme::config::Checked::new(&config, &wanted))
                    .expect("config serializes")
            );
            Ok(())
        }
        Command::HaproxyConfig => {
            print!("{}", haproxy_snippet::snippet(&config));
            Ok(())
        }
        Command::State {
            command: StateCommand::Dump { id },
        } => runtime().and_then(|rt| rt.block_on(state_dump(&config, id.as_deref()))),
        Command::Renew { id, force } => {
            let path = format!(
                "/certificates/{id}/renew{}",
                if force { "?force=1" } else { "" }
            );
            command(
                &config,
                hyper::Method::POST,
                &path,
                Vec::new(),
                |store, config| {
                    let _ = config;
                    ops::renew(store, &id, force, reconciler::unix_now())
                },
            )
        }
        Command::Retry { id } => command(
            &config,
            hyper::Method::POST,
            &format!("/certificates/{id}/retry"),
            Vec::new(),
            |store, _| ops::retry(store, &id, reconciler::unix_now()),
        ),
        Command::Domains {
            command: DomainsCommand::Add { spec },
        } => command(
            &config,
            hyper::Method::POST,
            "/domains",
            spec.clone().into_bytes(),
            |store, _| ops::domains_add(store, &wanted, &spec),
        ),
        Command::Domains {
            command: DomainsCommand::Remove { id },
        } => command(
            &config,
            hyper::Method::DELETE,
            &format!("/domains/{id}"),
            Vec::new(),
            |store, config| ops::domains_remove(store, config, &wanted, &id),
        ),
        Command::Import {
            command: ImportCommand::Certbot { dir },
        } => match import::read_certbot(&dir) {
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
            Ok(found) => {
                let body = serde_json::to_vec(&found).expect("lineages serialize");
                command(
                    &config,
                    hyper::Method::POST,
                    "/import",
                    body,
                    |store, config| {
                        import::adopt(store, config, &wanted, &found, reconciler::unix_now())
                    },
                )
            }
        },
        Command::Status => runtime().and_then(|rt| rt.block_on(status(&config))),
        Command::Healthcheck => runtime().and_then(|rt| rt.block_on(healthcheck(&config))),
        Command::Run => runtime().and_then(|rt| rt.block_on(run(config, wanted))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<Exit>().is_some() => {
            let exit = e.downcast_ref::<Exit>().expect("checked");
            eprintln!("error: {}", exit.1.trim_end());
            ExitCode::from(exit.0)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// An error with its own exit code: 2 refused or invalid, 3 no such certificate.
#[derive(Debug)]
struct Exit(u8, String);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.1)
    }
}

impl std::error::Error for Exit {}

/// Runs an operator command on the daemon through its admin socket, or, with no daemon, on the
/// store directly (the change then takes effect when the daemon starts).
fn command(
    config: &Config,
    method: hyper::Method,
    path: &str,
    body: Vec<u8>,
    offline: impl FnOnce(&Store, &Config) -> Result<ops::Done, OpError>,
) -> anyhow::Result<()> {
    let rt = runtime()?;
    let answer = rt
        .block_on(admin::request(&config.data_dir, method, path, body))
        .with_context(|| {
            format!(
                "asking the daemon through {}",
                admin::socket_path(&config.data_dir).display()
            )
        })?;
    if let Some(a) = answer {
        return print_answer(a);
    }
    let store = match Store::open(&config.data_dir) {
        Err(StoreError::Locked(dir)) => anyhow::bail!(
            "the store in {} is held by a running daemon whose admin socket {} does not answer",
            dir.display(),
            admin::socket_path(&dir).display()
        ),
        other => other?,
    };
    match offline(&store, config) {
        Ok(done) => {
            println!("{}", done.message);
            if !done.wake.is_empty() || done.reload {
                println!("(no daemon runs: this takes effect when it starts)");
            }
            Ok(())
        }
        Err(OpError::NotFound(m)) => Err(Exit(3, m).into()),
        Err(OpError::Refused(m)) => Err(Exit(2, m).into()),
        Err(OpError::Store(e)) => Err(e.into()),
    }
}

/// Prints a daemon's answer, or turns it into the error with the matching exit code.
fn print_answer(a: admin::Answer) -> anyhow::Result<()> {
    match a.status.as_u16() {
        200..=299 => {
            print!("{}", a.body);
            Ok(())
        }
        404 => Err(Exit(3, a.body).into()),
        400 | 409 => Err(Exit(2, a.body).into()),
        _ => anyhow::bail!("the daemon answered {}: {}", a.status, a.body.trim()),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// `healthcheck`: asks the running daemon's admin socket.
async fn healthcheck(config: &Config) -> anyhow::Result<()> {
    let socket = admin::socket_path(&config.data_dir);
    match admin::get(&config.data_dir, "/healthz").await {
        Ok(Some(body)) => {
            print!("{body}");
            Ok(())
        }
        Ok(None) => anyhow::bail!("no daemon answers on {}", socket.display()),
        Err(e) => {
            Err(anyhow::Error::new(e).context(format!("health check through {}", socket.display())))
        }
    }
}

/// `state dump [ID]`: from the running daemon if there is one, else straight from the store.
async fn state_dump(config: &Config, id: Option<&str>) -> anyhow::Result<()> {
    let id = id
        .map(CertId::parse)
        .transpose()
        .map_err(|e| Exit(2, format!("not a certificate id: {e}")))?;
    let id = id.as_deref();
    let path = id.map_or("/state".to_string(), |id| format!("/state/{id}"));
    if let Some(a) = admin::request(&config.data_dir, hyper::Method::GET, &path, Vec::new())
        .await
        .with_context(|| {
            format!(
                "asking the daemon through {}",
                admin::socket_path(&config.data_dir).display()
            )
        })?
    {
        return print_answer(a);
    }
    let text = from_daemon_or_store(config, None, |s| {
        admin::dump_json(s, id).map(|d| d.unwrap_or_default())
    })
    .await?;
    if text.is_empty() {
        return Err(Exit(3, format!("no certificate {:?}", id.unwrap_or_default())).into());
    }
    print!("{text}");
    Ok(())
}

/// `status`: the same, as a table (coloured on a terminal).
async fn status(config: &Config) -> anyhow::Result<()> {
    let color = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let path = if color { "/status?color=1" } else { "/status" };
    let text = from_daemon_or_store(config, Some(path), |s| admin::status_text(s, color)).await?;
    print!("{text}");
    Ok(())
}

/// Asks the running daemon for `path` (`None`: already asked); with no daemon, computes the
/// same from the store.
async fn from_daemon_or_store(
    config: &Config,
    path: Option<&str>,
    offline: impl FnOnce(&Store) -> Result<String, StoreError>,
) -> anyhow::Result<String> {
    if let Some(path) = path {
        if let Some(text) = admin::get(&config.data_dir, path).await.with_context(|| {
            format!(
                "asking the daemon through {}",
                admin::socket_path(&config.data_dir).display()
            )
        })? {
            return Ok(text);
        }
    }
    match Store::open(&config.data_dir) {
        Ok(store) => Ok(offline(&store)?),
        Err(StoreError::Locked(dir)) => anyhow::bail!(
            "the store in {} is held by a running daemon whose admin socket {} does not answer",
            dir.display(),
            admin::socket_path(&dir).display()
        ),
        Err(e) => Err(e.into()),
    }
}

/// Opens the store for the daemon. A CLI command that found no daemon (`state dump` during a
/// restart) holds the lock for a moment: wait for it rather than fail, but not for long, since
/// another daemon on the same DATA_DIR holds it for good.
async fn open_store_waiting(data_dir: &std::path::Path) -> anyhow::Result<Store> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match Store::open(data_dir) {
            Err(StoreError::Locked(_)) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            other => return Ok(other?),
        }
    }
}

/// The daemon.
async fn run(config: Config, wanted: WantedSet) -> anyhow::Result<()> {
    // The responder listens before anything else, so validation traffic always has a target.
    let listener = responder::bind(config.responder_listen)
        .await
        .with_context(|| {
            format!(
            "cannot listen on RESPONDER_LISTEN {} (port 80 needs root or CAP_NET_BIND_SERVICE; \
             or pick another address that HAProxy forwards to)",
            config.responder_listen
        )
        })?;
    // Bumped by SIGHUP and by changes to DOMAINS_FILE; the reconciler re-reads the configuration.
    let (reload_tx, reload) = tokio::sync::watch::channel(0u64);
    let reload_tx = std::sync::Arc::new(reload_tx);
    let shutdown = signals::install(reload_tx.clone()).context("cannot install signal handlers")?;
    let tokens = Tokens::default();
    let responder_task = tokio::spawn(responder::serve(listener, tokens.clone(), shutdown.clone()));
    tracing::info!(listen = %config.responder_listen, "challenge responder listening");

    let store = open_store_waiting(&config.data_dir).await?;
    let installer = Installer::new(
        config.certs_dir.clone(),
        config.haproxy_certs_dir.clone(),
        config.haproxy_runtime_api.clone(),
    );
    if installer.prepare_certs_dir()? {
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
    // Read again just below, with the certificates added at runtime; not kept twice (100,000
    // certificates are ~25 MiB of names).
    let mut wanted = wanted;
    wanted.forget_initial();
    let (shared, woken) = Shared::new(config, wanted, store, installer, tokens, reload_tx.clone());
    let shared = Arc::new(shared);
    // DOMAINS and DOMAINS_FILE, and the certificates added at runtime (kept in the store).
    let (sources, specs) = match shared.wanted_specs_since(None) {
        Ok((_, Some(specs))) if specs.is_empty() => {
            return Err(Exit(2, haproxy_acme::config::nothing_to_manage().to_string()).into())
        }
        Ok((sources, specs)) => (
            sources,
            specs.expect("always read without a digest to match"),
        ),
        Err(errors) => {
            return Err(Exit(2, haproxy_acme::config::ConfigError(errors).to_string()).into())
        }
    };
    let (wanted, unwanted) = reconciler::sync_specs(&shared, &specs)?;
    shared
        .ready
        .store(true, std::sync::atomic::Ordering::Release);
    tracing::info!(certificates = wanted.len(), directory = %shared.config.acme_directory, "store in line with the configuration");
    // Held for the daemon's lifetime: dropping it stops the watch.
    let _watcher = match &shared.config.domains_file {
        Some(file) => Some(
            haproxy_acme::watch::watch_file(file, reload_tx.clone())
                .with_context(|| format!("cannot watch DOMAINS_FILE {}", file.display()))?,
        ),
        None => None,
    };
    let admin_task = tokio::spawn(admin::serve(
        admin_listener,
        admin_tcp,
        shared.clone(),
        shutdown.clone(),
    ));
    // No `sleep` in a compose file: the daemon itself waits until HAProxy can route validation
    // traffic and take certificates, before it orders anything.
    let mut waiting = shutdown.clone();
    if !shared.installer.wait_for_runtime_api(&mut waiting).await {
        let _ = tokio::join!(responder_task, admin_task);
        let _ = std::fs::remove_file(admin::socket_path(&shared.config.data_dir));
        return Ok(());
    }
    reconciler::run(
        shared.clone(),
        (sources, specs),
        wanted,
        unwanted,
        shutdown,
        reload,
        woken,
    )
    .await;
    let _ = tokio::join!(responder_task, admin_task);
    let _ = std::fs::remove_file(admin::socket_path(&shared.config.data_dir));
    tracing::info!("stopped");
    Ok(())
}
