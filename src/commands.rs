//! The CLI's commands other than `run`: each asks the running daemon through the admin socket
//! ([`admin::client`]) or, with no daemon, does the same on the store itself. Exit codes: 0
//! success, 1 runtime failure, 2 refused or invalid, 3 no such certificate.

use std::sync::Arc;

use anyhow::Context;

use crate::admin::client::{Answer, Ask, Client, Outcome};
use crate::clock::unix_now;
use crate::config::{CertId, Config, WantedSet};
use crate::ops::{self, OpError};
use crate::store::sled::SledStore;
use crate::store::{Store, StoreError};
use haproxy_acme_state::RevocationReason;

mod migrate_store;
mod persist;

pub use migrate_store::migrate_store;
pub use persist::dns_persist_record;

/// An error with its own exit code: 2 refused or invalid, 3 no such certificate.
#[derive(Debug)]
pub struct Exit(pub u8, pub String);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.1)
    }
}

impl std::error::Error for Exit {}

/// An operator command that changes state.
pub enum Op {
    Renew { id: String, force: bool },
    Retry { id: String },
    DomainsAdd { spec: String },
    DomainsRemove { id: String },
    Import(crate::import::Found),
}

/// Runs `op` on the daemon through its admin socket, or, with no daemon, on the store directly
/// (the change then takes effect when the daemon starts).
pub async fn operate(config: Config, wanted: WantedSet, op: Op) -> anyhow::Result<()> {
    let client = Client::new(&config.data_dir);
    let ask = match &op {
        Op::Renew { id, force } => Ask::Renew {
            id: id.clone(),
            force: *force,
        },
        Op::Retry { id } => Ask::Retry { id: id.clone() },
        Op::DomainsAdd { spec } => Ask::DomainsAdd { spec: spec.clone() },
        Op::DomainsRemove { id } => Ask::DomainsRemove { id: id.clone() },
        Op::Import(found) => Ask::Import {
            lineages_json: serde_json::to_vec(found).expect("lineages serialize"),
        },
    };
    let store = match reach(&client, &ask, &config.data_dir).await? {
        Reached::Daemon(a) => return print_answer(a),
        Reached::Store(store) => store,
    };
    let store = store.as_ref();
    let now = unix_now();
    let wanted = Arc::new(wanted);
    let result = match &op {
        Op::Renew { id, force } => ops::renew(store, id, *force, now).await,
        Op::Retry { id } => ops::retry(store, id, now).await,
        Op::DomainsAdd { spec } => ops::domains_add(store, &wanted, spec).await,
        Op::DomainsRemove { id } => ops::domains_remove(store, &config, &wanted, id).await,
        Op::Import(found) => crate::import::adopt(store, &config, &wanted, found, now).await,
    };
    match result {
        Ok(done) => {
            println!("{}", done.message);
            if !done.wake.is_empty() || done.reload {
                println!("(no daemon runs: this takes effect when it starts)");
            }
            Ok(())
        }
        Err(OpError::NotFound(m)) => Err(Exit(3, m).into()),
        Err(OpError::Refused(m)) => Err(Exit(2, m).into()),
        Err(OpError::Unavailable(m)) => Err(anyhow::anyhow!(m)),
        Err(OpError::Store(e)) => Err(e.into()),
    }
}

/// `revoke ID --reason R`: the daemon revokes and orders anew, and this waits (up to `timeout`)
/// until HAProxy serves the new certificate, saying what it waits for; with no daemon, revokes
/// and records it in the store (the new certificate is ordered when the daemon starts).
pub async fn revoke(
    config: Config,
    id: &str,
    reason: RevocationReason,
    timeout: std::time::Duration,
) -> anyhow::Result<()> {
    let id = CertId::parse(id).map_err(|e| Exit(2, format!("not a certificate id: {e}")))?;
    let id = id.as_str();
    let client = Client::new(&config.data_dir);
    let ask = Ask::Revoke {
        id: id.to_string(),
        reason: reason.as_str(),
    };
    match reach(&client, &ask, &config.data_dir).await? {
        Reached::Daemon(a) if a.outcome == Outcome::Done => {
            print!("{}", a.body);
            wait_replaced(&client, id, timeout).await
        }
        Reached::Daemon(a) => print_answer(a),
        Reached::Store(store) => {
            let acme = crate::acme::LazyAcme::new(Arc::new(config), store.clone());
            match crate::revoke::revoke(store.as_ref(), &acme, id, reason, unix_now()).await {
                Ok(done) => {
                    println!("{}", done.message);
                    println!("(no daemon runs: the new certificate is ordered when it starts)");
                    Ok(())
                }
                Err(OpError::NotFound(m)) => Err(Exit(3, m).into()),
                Err(OpError::Refused(m)) => Err(Exit(2, m).into()),
                Err(OpError::Unavailable(m)) => Err(anyhow::anyhow!(m)),
                Err(OpError::Store(e)) => Err(e.into()),
            }
        }
    }
}

/// Polls the daemon's state of `id` until the certificate it serves is not the revoked one,
/// printing each phase and failure on the way; an error after `timeout`.
async fn wait_replaced(
    client: &Client,
    id: &str,
    timeout: std::time::Duration,
) -> anyhow::Result<()> {
    use haproxy_acme_state::attention::same_serial;
    println!(
        "waiting up to {} s for the new certificate of {id} to be issued and served by HAProxy...",
        timeout.as_secs()
    );
    let deadline = tokio::time::Instant::now() + timeout;
    let mut said = String::new();
    loop {
        let a = ask_daemon(client, &Ask::State(Some(id.to_string())))
            .await?
            .ok_or_else(|| anyhow::anyhow!("the daemon stopped answering"))?;
        if a.outcome != Outcome::Done {
            return print_answer(a);
        }
        let dump: serde_json::Value = serde_json::from_str(&a.body)?;
        let cert = &dump["certificates"][0];
        let text = |v: &serde_json::Value| v.as_str().unwrap_or("").to_string();
        let revoked = text(&cert["revoked"]["serial"]);
        let serial = text(&cert["serial"]);
        if !serial.is_empty()
            && !same_serial(&serial, &revoked)
            && cert["installed"].as_bool() == Some(true)
        {
            println!("{id}: new certificate serial {serial} is served (revoked serial {revoked})");
            return Ok(());
        }
        let e = &cert["last_error"];
        let now = match e.is_null() {
            true => format!("  {}", text(&cert["phase"])),
            false => format!(
                "  {} failed ({}): {}",
                text(&e["step"]),
                text(&e["kind"]),
                text(&e["message"])
            ),
        };
        if now != said {
            println!("{now}");
            said = now;
        }
        if text(&e["kind"]) == "permanent" {
            anyhow::bail!(
                "{id}: the new certificate cannot be obtained until the cause is fixed (then `haproxy-acme retry {id}`); revoked serial {revoked} is still served"
            );
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "{id}: no new certificate served after {} s; the daemon keeps trying (see `haproxy-acme status`); revoked serial {revoked} is still served",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// `state dump [ID]`: from the running daemon if there is one, else straight from the store.
/// The dump of every certificate is written as it arrives (or as the store is scanned), so it
/// takes the memory of a few records whatever their number.
pub async fn state_dump(config: &Config, id: Option<&str>) -> anyhow::Result<()> {
    let id = id
        .map(CertId::parse)
        .transpose()
        .map_err(|e| Exit(2, format!("not a certificate id: {e}")))?;
    let id = id.as_deref();
    let client = Client::new(&config.data_dir);
    let ask = Ask::State(id.map(String::from));
    if id.is_none() {
        let mut out = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout());
        let streamed = client
            .send_to(&ask, &mut out)
            .await
            .with_context(|| format!("asking the daemon through {}", client.socket().display()))?;
        if let Some(a) = streamed {
            return print_answer(a);
        }
    }
    let store = match reach(&client, &ask, &config.data_dir).await? {
        Reached::Daemon(a) => return print_answer(a),
        Reached::Store(store) => store,
    };
    if id.is_none() {
        return dump_store(store.as_ref()).await;
    }
    let text = crate::admin::dump_json(store.as_ref(), id, &[], None, unix_now())
        .await?
        .ok_or_else(|| Exit(3, format!("no certificate {:?}", id.unwrap_or_default())))?;
    print!("{text}");
    Ok(())
}

/// Writes the dump of every record of `store` to stdout while scanning it.
async fn dump_store(store: &dyn Store) -> anyhow::Result<()> {
    use std::io::Write;
    let writer = haproxy_acme_state::dump::DumpWriter::new(unix_now());
    let out = std::io::BufWriter::new(std::io::stdout());
    let state = Arc::new(std::sync::Mutex::new((out, writer, Ok(()))));
    {
        let mut s = state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (out, writer, _) = &mut *s;
        out.write_all(writer.head().as_bytes())?;
    }
    let visiting = state.clone();
    store
        .scan(Box::new(move |r| {
            let mut s = visiting
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let (out, writer, written) = &mut *s;
            if written.is_ok() {
                *written = out.write_all(writer.record(&r).as_bytes());
            }
        }))
        .await?;
    let mut s = state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let (out, writer, written) = &mut *s;
    std::mem::replace(written, Ok(()))?;
    out.write_all(writer.tail(&[], None).as_bytes())?;
    out.flush()?;
    Ok(())
}

/// `status [ID]`: the same, as a table (coloured on a terminal), or a summary above 100
/// certificates unless `all`; with `id`, its line only.
pub async fn status(config: &Config, id: Option<&str>, all: bool) -> anyhow::Result<()> {
    let id = id
        .map(CertId::parse)
        .transpose()
        .map_err(|e| Exit(2, format!("not a certificate id: {e}")))?;
    let id = id.as_deref();
    let color = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let client = Client::new(&config.data_dir);
    let ask = Ask::Status {
        color,
        id: id.map(String::from),
        all,
    };
    let store = match reach(&client, &ask, &config.data_dir).await? {
        Reached::Daemon(a) => return print_answer(a),
        Reached::Store(store) => store,
    };
    let text = match id {
        None => {
            let store = store.as_ref();
            crate::admin::status_text(store, &[], None, (color, all), unix_now()).await?
        }
        Some(id) => match store.get(id).await? {
            Some(r) => haproxy_acme_state::dump::status_table([&r], unix_now(), color),
            None => return Err(Exit(3, format!("no certificate {id:?}")).into()),
        },
    };
    print!("{text}");
    Ok(())
}

/// `status --check`: the report of `state::attention::check_report` from the daemon, or from the
/// store when no daemon runs. Exit 0 when nothing needs attention, 1 when something does, 3 when
/// neither can be read (the report's first line says `UNKNOWN` and why), as Nagios reads them.
pub async fn status_check(config: &Config) -> anyhow::Result<()> {
    use haproxy_acme_state::attention::{check_exit_code, CHECK_PREFIX};
    let unknown = |why: String| {
        println!(
            "{CHECK_PREFIX} UNKNOWN - {}",
            why.lines().next().unwrap_or("")
        );
        Err(Exit(3, why).into())
    };
    let client = Client::new(&config.data_dir);
    if !SledStore::exists(&config.data_dir) {
        if let Ok(None) = ask_daemon(&client, &Ask::Check).await {
            return unknown(format!(
                "no daemon answers on {} and DATA_DIR {} holds no store",
                client.socket().display(),
                config.data_dir.display()
            ));
        }
    }
    let report = match reach(&client, &Ask::Check, &config.data_dir).await {
        Ok(Reached::Daemon(Answer {
            outcome: Outcome::Done,
            body,
        })) => body,
        Ok(Reached::Daemon(a)) => {
            return unknown(format!("the daemon answered: {}", a.body.trim()))
        }
        Ok(Reached::Store(store)) => {
            match crate::admin::check_text(store.as_ref(), None, &[], unix_now()).await {
                Ok(report) => report,
                Err(e) => return unknown(format!("{e:#}")),
            }
        }
        Err(e) => return unknown(format!("{e:#}")),
    };
    print!("{report}");
    match check_exit_code(&report) {
        0 => Ok(()),
        code => Err(Exit(code, report.lines().next().unwrap_or("").to_string()).into()),
    }
}

/// `healthcheck`: asks the running daemon's admin socket.
pub async fn healthcheck(config: &Config) -> anyhow::Result<()> {
    let client = Client::new(&config.data_dir);
    match ask_daemon(&client, &Ask::Healthz).await? {
        None => anyhow::bail!("no daemon answers on {}", client.socket().display()),
        Some(Answer {
            outcome: Outcome::Done,
            body,
        }) => {
            print!("{body}");
            Ok(())
        }
        Some(a) => anyhow::bail!(
            "health check through {}: {}",
            client.socket().display(),
            a.body.trim()
        ),
    }
}

async fn ask_daemon(client: &Client, ask: &Ask) -> anyhow::Result<Option<Answer>> {
    client
        .send(ask)
        .await
        .with_context(|| format!("asking the daemon through {}", client.socket().display()))
}

/// Prints a daemon's answer, or turns it into the error with the matching exit code.
fn print_answer(a: Answer) -> anyhow::Result<()> {
    match a.outcome {
        Outcome::Done => {
            print!("{}", a.body);
            Ok(())
        }
        Outcome::NotFound => Err(Exit(3, a.body).into()),
        Outcome::Refused => Err(Exit(2, a.body).into()),
        Outcome::Failed(status) => {
            anyhow::bail!("the daemon answered {status}: {}", a.body.trim())
        }
    }
}

/// What a command reached: the running daemon's answer, or the store itself when no daemon runs.
enum Reached {
    Daemon(Answer),
    Store(Arc<dyn Store>),
}

/// How long a command waits for a daemon that holds the store but does not answer (yet): a
/// starting daemon locks the store a moment before it binds the admin socket (longer with a
/// large store), and a stopping one removes the socket a moment before it lets the store go.
/// Without the wait, `haproxy-acme renew` right after `systemctl start` failed.
const UNANSWERED_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// Asks the daemon; with no daemon answering, opens the store (the CLI's own way in). A store
/// held by a daemon that does not answer is tried again until [`UNANSWERED_LOCK_WAIT`]: `ask`
/// is sent again only because it never reached a daemon.
async fn reach(client: &Client, ask: &Ask, data_dir: &std::path::Path) -> anyhow::Result<Reached> {
    let deadline = tokio::time::Instant::now() + UNANSWERED_LOCK_WAIT;
    loop {
        if let Some(a) = ask_daemon(client, ask).await? {
            return Ok(Reached::Daemon(a));
        }
        match SledStore::open(data_dir) {
            Ok(store) => return Ok(Reached::Store(Arc::new(store))),
            Err(StoreError::Locked(_)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e @ StoreError::Damaged { .. }) => {
                return Err(Exit(crate::recovery::EXIT_DAMAGED, e.to_string()).into())
            }
            Err(StoreError::Locked(dir)) => anyhow::bail!(
                "the store in {} is held by a running daemon whose admin socket {} has not answered for {} s: is the daemon hung? (stop it, then run the command again)",
                dir.display(),
                crate::admin::socket_path(&dir).display(),
                UNANSWERED_LOCK_WAIT.as_secs()
            ),
            Err(e) => return Err(e.into()),
        }
    }
}
