//! Entry point: parses the command line and the configuration, sets up logging, and hands the
//! command to `daemon::run` or `commands`. Exit codes: 0 success, 1 runtime failure, 2 invalid
//! configuration or usage, 3 no such certificate, 4 the store is damaged (refused to start on
//! it; see `recovery`).

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use haproxy_acme::cli::{self, Command, DomainsCommand, ImportCommand, StateCommand};
use haproxy_acme::commands::{self, Exit, Op};
use haproxy_acme::config::{Config, Need, WantedSet};
use haproxy_acme::daemon::{self, DaemonError, Triggers};
use haproxy_acme::{haproxy_snippet, import, recovery, signals};
use haproxy_acme_state::RevocationReason;

/// jemalloc (Cargo.toml says why), its pages freed for a second handed back to the system by
/// its background thread, and two arenas: the daemon's allocations come from a few tokio
/// workers and sled's threads, and more arenas (jemalloc's default is four per core) each keep
/// pages of their own. It is jemalloc's `malloc` too (unprefixed), for every library: with
/// prefixed symbols, the same settings left the idle RSS at 100,000 certificates at 100 MiB
/// against 79 (BENCHMARKS.md). An operator's `MALLOC_CONF` environment variable overrides
/// these settings (jemalloc reads it after this).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[cfg(feature = "jemalloc")]
#[allow(non_upper_case_globals)]
#[export_name = "malloc_conf"]
pub static malloc_conf: &[u8] =
    b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0,narenas:2\0";

fn main() -> ExitCode {
    // Every file and directory this process creates is private (0600/0700) whatever umask it was
    // started with: sled's own files hold the keys. The deploy hook gets the original one back.
    // SAFETY: umask(2) only swaps this process's file mode creation mask; no thread runs yet.
    let inherited = unsafe { libc::umask(0o077) };
    haproxy_acme::hook::set_inherited_umask(inherited);
    let options = std::env::var("OPTIONS").ok();
    let cli = match cli::parse(std::env::args_os().collect(), options.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            if let Some(why) = cli::explain_env(&e, |v| std::env::var_os(v)) {
                eprintln!("{why}");
            }
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
        Command::Run | Command::CheckConfig | Command::Rebuild => Need::Daemon,
        Command::State { .. }
        | Command::Status { .. }
        | Command::HaproxyConfig
        | Command::Healthcheck
        | Command::Renew { .. }
        | Command::Retry { .. }
        | Command::Revoke { .. }
        | Command::Domains { .. }
        | Command::Import { .. }
        | Command::Backup { .. }
        | Command::Restore { .. }
        | Command::MigrateStore
        | Command::DnsPersistRecord { .. } => Need::StoreOnly,
    };
    // The daemon's store opens while the configuration is read (`daemon::EarlyStore`).
    let early = matches!(cli.command, Command::Run)
        .then(|| daemon::EarlyStore::start(&cli.settings))
        .flatten();
    let (config, wanted) = match Config::from_raw(&cli.settings, need) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            drop(early);
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
        } => block_on(commands::state_dump(&config, id.as_deref())),
        Command::Status { check: true, .. } => block_on(commands::status_check(&config)),
        Command::Status { id, all, .. } => block_on(commands::status(&config, id.as_deref(), all)),
        Command::Healthcheck => block_on(commands::healthcheck(&config)),
        Command::Renew { id, force } => {
            block_on(commands::operate(config, wanted, Op::Renew { id, force }))
        }
        Command::Revoke {
            id,
            reason,
            timeout,
        } => {
            let reason = RevocationReason::parse(&reason).expect("clap checked the reason");
            match haproxy_acme::config::parse_duration(&timeout) {
                Err(e) => {
                    eprintln!("error: --timeout: {e}");
                    return ExitCode::from(2);
                }
                Ok(t) => block_on(commands::revoke(config, &id, reason, t)),
            }
        }
        Command::Retry { id } => block_on(commands::operate(config, wanted, Op::Retry { id })),
        Command::Domains {
            command: DomainsCommand::Add { spec },
        } => block_on(commands::operate(config, wanted, Op::DomainsAdd { spec })),
        Command::Domains {
            command: DomainsCommand::Remove { id },
        } => block_on(commands::operate(config, wanted, Op::DomainsRemove { id })),
        Command::Import {
            command: ImportCommand::Certbot { dir },
        } => match import::read_certbot(&dir) {
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
            Ok(found) => block_on(commands::operate(config, wanted, Op::Import(found))),
        },
        Command::DnsPersistRecord { id, until, json } => block_on(commands::dns_persist_record(
            config,
            wanted,
            &id,
            until.as_deref(),
            json,
        )),
        Command::Run => block_on(run(config, wanted, early)),
        Command::Rebuild => block_on(async {
            println!("{}", recovery::rebuild(&config, &wanted).await?);
            Ok(())
        }),
        Command::Backup { file } => block_on(async {
            println!("{}", recovery::backup(&config, &file).await?);
            Ok(())
        }),
        Command::Restore { file } => block_on(async {
            println!("{}", recovery::restore(&config, &file).await?);
            Ok(())
        }),
        Command::MigrateStore => block_on(commands::migrate_store(&config)),
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

/// Runs `f` to completion on a new multi-threaded runtime.
fn block_on<F: std::future::Future<Output = anyhow::Result<()>>>(f: F) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(f)
}

/// `run`: the daemon, stopped by SIGTERM/SIGINT, re-reading its configuration on SIGHUP.
async fn run(
    config: Config,
    wanted: WantedSet,
    early: Option<daemon::EarlyStore>,
) -> anyhow::Result<()> {
    let (reload, _) = tokio::sync::watch::channel(0u64);
    let reload = Arc::new(reload);
    let shutdown = signals::install(reload.clone()).context("cannot install signal handlers")?;
    match daemon::run(config, wanted, Triggers { shutdown, reload }, early).await {
        Ok(()) => Ok(()),
        Err(DaemonError::Config(e)) => Err(Exit(2, e.to_string()).into()),
        Err(DaemonError::StoreDamaged(e)) => {
            Err(Exit(recovery::EXIT_DAMAGED, e.to_string()).into())
        }
        Err(DaemonError::Other(e)) => Err(e),
    }
}
