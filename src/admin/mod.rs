//! The admin endpoint: HTTP/1.1 on a unix socket in DATA_DIR (`admin.sock`, mode 0600), off the
//! public path, and read-only on a loopback TCP address when ADMIN_LISTEN is set (for
//! Prometheus). Routes: GET /state[/ID], /status[/ID][?all=1], /check (`status --check`), /healthz, /metrics, /account
//! (the ACME account URL, registered first if needed); POST
//! /certificates/ID/renew[?force=1], /certificates/ID/retry, /certificates/ID/revoke?reason=R, /domains (body: the names),
//! /import (body: JSON lineages); DELETE /domains/ID; GET /backup (a store snapshot, keys
//! included: unix socket only). While the daemon runs it holds sled's
//! exclusive lock, so the CLI reads the state through here ([`client`], the only other user of
//! hyper's client side); when no daemon answers, the CLI opens the store itself.

use std::convert::Infallible;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::CONTENT_TYPE;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::watch;

pub mod client;
pub mod fleet;
pub mod stream;

use crate::clock::Clock;
use crate::config::{Config, WantedSet};
use crate::health::{Health, Part, Probes};
use crate::ops;
use crate::reconciler::Control;
use crate::store::view::View;
use crate::store::Store;
use haproxy_acme_state::dump::fleet::{FleetFacts, FleetView};
use haproxy_acme_state::dump::Waiting;

/// What the admin endpoint needs: the store to read and change, the reconciler's control
/// handle, the health it reports, and the configuration operator commands check against.
pub struct Admin {
    pub store: Arc<dyn Store>,
    pub config: Arc<Config>,
    pub wanted: Arc<WantedSet>,
    pub control: Control,
    pub health: Arc<Health>,
    pub clock: Arc<dyn Clock>,
    /// The daemon's ACME account, shared with the reconciler (`revoke`).
    pub acme: Arc<crate::acme::LazyAcme>,
    /// A fleet's lease and nodes (`status`, the dump, `/metrics`); `None` on one machine.
    pub fleet: Option<fleet::FleetView>,
    /// The certificates' summaries `status` and `/metrics` read instead of the store (on one
    /// machine; `None` in a fleet, whose other nodes write the store too).
    pub view: Option<Arc<View>>,
    /// True once the start-up pass brought the store in line with the configuration (and
    /// filled `view`); every route but /healthz waits for it.
    pub passed: watch::Receiver<bool>,
}

/// The body of an admin answer: whole, or streamed ([`stream::dump`]).
type Body = BoxBody<Bytes, io::Error>;

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin.sock")
}

/// The JSON dump of every record in `store`, or of certificate `id` only (`None`: no such
/// certificate), with what the daemon is waiting for (`waiting`; empty offline) and a fleet's
/// leader and nodes (`fleet`; lagging is judged against the records dumped).
pub async fn dump_json(
    store: &dyn Store,
    id: Option<&str>,
    waiting: &[Waiting],
    fleet: Option<&FleetFacts>,
    now: i64,
) -> Result<Option<String>, crate::store::StoreError> {
    let records = match id {
        None => store.records().await?,
        Some(id) => match store.get(id).await? {
            Some(r) => vec![r],
            None => return Ok(None),
        },
    };
    let mut dump = haproxy_acme_state::dump::dump(&records, now);
    dump.waiting_for = haproxy_acme_state::dump::waiting_views(waiting);
    dump.fleet = fleet.map(|f| FleetView::new(f, &records));
    Ok(Some(
        serde_json::to_string_pretty(&dump).expect("the dump always serializes") + "\n",
    ))
}

/// The `status` screen of every record in `store` (`state::dump::status_screen`: the table of
/// every one if `all` or up to 100, else a summary), then a fleet's leader and nodes (`fleet`),
/// then what the daemon is waiting for (`waiting`; empty offline). A store that cannot be read
/// is a line of the screen, so what the daemon waits for is still shown.
pub async fn status_text(
    store: &dyn Store,
    waiting: &[Waiting],
    fleet: Option<Result<FleetFacts, crate::store::StoreError>>,
    (color, all): (bool, bool),
    now: i64,
) -> Result<String, crate::store::StoreError> {
    let (table, records) = match store.records().await {
        Ok(records) => {
            let summaries = crate::metrics::summaries(&records);
            let summaries = summaries.iter().map(|(id, s)| (*id, s));
            let screen = haproxy_acme_state::dump::status_screen(summaries, now, color, all);
            (screen, records)
        }
        Err(e) if !waiting.is_empty() => (
            format!("the certificates cannot be read now: {e}\n"),
            Vec::new(),
        ),
        Err(e) => return Err(e),
    };
    let fleet = match fleet {
        None => String::new(),
        Some(Ok(f)) => FleetView::new(&f, &records).status_text(now),
        Some(Err(e)) => format!("\nfleet: the lease and nodes cannot be read now: {e}\n"),
    };
    Ok(status_rest(table + &fleet, waiting, color, now))
}

/// The `status` screen after its table (and a fleet's lines): what the daemon waits for and the
/// dns-persist-01 records that expire soon.
fn status_rest(table: String, waiting: &[Waiting], color: bool, now: i64) -> String {
    let persist =
        crate::dns_persist::status_text(&crate::metrics::global().dns_persist_expiring(now), now);
    table + &haproxy_acme_state::dump::waiting_text(waiting, now, color) + &persist
}

/// The `status --check` report of every record in `store`; with the daemon's `view`, of the
/// records it says need attention only (`stream::check_report`).
pub async fn check_text(
    store: &dyn Store,
    view: Option<&View>,
    waiting: &[Waiting],
    now: i64,
) -> Result<String, crate::store::StoreError> {
    if let Some(view) = view {
        return stream::check_report(view, store, waiting, now).await;
    }
    let records = store.records().await?;
    Ok(haproxy_acme_state::attention::check_report_waiting(
        &records, waiting, now,
    ))
}

/// Binds the admin socket. Only called while holding the store's lock, so a socket file that
/// is already there is a leftover of a previous run and is replaced.
pub fn bind(data_dir: &Path) -> io::Result<UnixListener> {
    let path = socket_path(data_dir);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// The admin endpoint's listeners: the unix socket always, a TCP address when ADMIN_LISTEN says.
/// Commands that change state are accepted on the unix socket only (its 0600 mode is the access
/// control; anyone on the machine can reach a loopback port).
pub async fn serve(
    unix: UnixListener,
    tcp: Option<TcpListener>,
    admin: Arc<Admin>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            r = unix.accept() => r.map(|(s, _)| Conn::Unix(s)),
            r = async { tcp.as_ref().expect("guarded").accept().await }, if tcp.is_some() => {
                r.map(|(s, _)| Conn::Tcp(s))
            }
            _ = shutdown.changed() => return,
        };
        let conn = match accepted {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                // As in the responder: do not spin on a persistent error (out of fds).
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let writable = matches!(conn, Conn::Unix(_));
            let service = service_fn(move |req: Request<Incoming>| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(route(&admin, req, writable).await) }
            });
            let builder = hyper::server::conn::http1::Builder::new();
            let _ = match conn {
                Conn::Unix(s) => builder.serve_connection(TokioIo::new(s), service).await,
                Conn::Tcp(s) => builder.serve_connection(TokioIo::new(s), service).await,
            };
        });
    }
}

enum Conn {
    Unix(UnixStream),
    Tcp(TcpStream),
}

fn reply(status: StatusCode, ctype: &str, body: String) -> Response<Body> {
    let whole = Full::new(Bytes::from(body)).map_err(|never| match never {});
    with_type(status, ctype, whole.boxed())
}

fn with_type(status: StatusCode, ctype: &str, body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        ctype.parse().expect("content types are valid headers"),
    );
    r
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    reply(status, "text/plain; charset=utf-8", body)
}

/// The largest request body accepted (an `import` of many certificates).
const MAX_BODY: usize = 64 * 1024 * 1024;

async fn route(admin: &Admin, req: Request<Incoming>, writable: bool) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let flag = |name: &str| query.split('&').any(|kv| kv == format!("{name}=1"));
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    if segments != ["healthz"] {
        let mut passed = admin.passed.clone();
        if passed.wait_for(|p| *p).await.is_err() {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "the daemon stopped during start-up\n".into(),
            );
        }
    }
    let store_error =
        |e: crate::store::StoreError| text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"));
    if method != Method::GET && !writable {
        return text(
            StatusCode::FORBIDDEN,
            "commands are accepted on the admin unix socket only (ADMIN_LISTEN is read-only)\n"
                .into(),
        );
    }
    let body = if method == Method::GET {
        Bytes::new()
    } else {
        match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("request body: {e}\n")),
        }
    };
    let now = admin.clock.now();
    let store = admin.store.as_ref();
    let waiting = admin.health.conditions().waiting();
    // Read only for the routes that show it.
    let fleet = || async {
        match &admin.fleet {
            Some(f) => Some(f.facts().await),
            None => None,
        }
    };
    match (&method, segments.as_slice()) {
        // Written as the store is scanned: the daemon's memory stays flat.
        (&Method::GET, ["state"]) if admin.view.is_some() => {
            let body = stream::dump(admin.store.clone(), waiting, now);
            with_type(StatusCode::OK, "application/json", body.boxed())
        }
        (&Method::GET, ["state"]) | (&Method::GET, ["state", _]) => {
            let id = segments.get(1).copied();
            let fleet = match fleet().await.transpose() {
                Ok(f) => f,
                Err(e) => return store_error(e),
            };
            match dump_json(store, id, &waiting, fleet.as_ref(), now).await {
                Ok(Some(json)) => reply(StatusCode::OK, "application/json", json),
                Ok(None) => text(
                    StatusCode::NOT_FOUND,
                    format!("no certificate {:?}\n", id.unwrap_or_default()),
                ),
                Err(e) => {
                    let t = haproxy_acme_state::dump::waiting_text(&waiting, now, false);
                    text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n{t}"))
                }
            }
        }
        (&Method::GET, ["status", id]) => {
            let table = match &admin.view {
                Some(view) => Ok(stream::status_table(view, id, now, flag("color"))),
                None => store.get(id).await.map(|r| {
                    r.map(|r| haproxy_acme_state::dump::status_table([&r], now, flag("color")))
                }),
            };
            match table {
                Ok(Some(t)) => text(StatusCode::OK, t),
                Ok(None) => text(StatusCode::NOT_FOUND, format!("no certificate {id:?}\n")),
                Err(e) => store_error(e),
            }
        }
        (&Method::GET, ["status"]) if admin.view.is_some() => {
            let view = admin.view.as_deref().expect("guarded");
            let screen = stream::status_screen(view, now, flag("color"), flag("all"));
            text(
                StatusCode::OK,
                status_rest(screen, &waiting, flag("color"), now),
            )
        }
        (&Method::GET, ["status"]) => {
            let how = (flag("color"), flag("all"));
            match status_text(store, &waiting, fleet().await, how, now).await {
                Ok(t) => text(StatusCode::OK, t),
                Err(e) => store_error(e),
            }
        }
        (&Method::GET, ["account"]) => match admin.acme.account_url().await {
            Ok(url) => text(StatusCode::OK, format!("{url}\n")),
            Err(e) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the ACME account is not available: {e}\n"),
            ),
        },
        (&Method::GET, ["check"]) => {
            match check_text(store, admin.view.as_deref(), &waiting, now).await {
                Ok(t) => text(StatusCode::OK, t),
                Err(e) => store_error(e),
            }
        }
        (&Method::GET, ["healthz"]) => {
            // Only probe a store and a directory that are open for business.
            let probes = if admin.health.ready() {
                probes(admin, now).await
            } else {
                Probes::skipped()
            };
            let (ok, why) = admin.health.verdict(probes, now);
            let status = if ok {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            text(status, format!("{why}\n"))
        }
        (&Method::GET, ["backup"]) if !writable => text(
            StatusCode::FORBIDDEN,
            "a backup holds private keys: it is served on the admin unix socket only\n".into(),
        ),
        (&Method::GET, ["backup"]) => match store.snapshot(now).await {
            Ok(bytes) => reply(
                StatusCode::OK,
                "application/x-ndjson",
                String::from_utf8_lossy(&bytes).into_owned(),
            ),
            Err(e) => store_error(e),
        },
        (&Method::GET, ["metrics"]) if admin.view.is_some() => {
            let map = admin.view.as_deref().expect("guarded").read();
            let text = crate::metrics::global().render(
                View::summaries(&map),
                now,
                admin.health.ready(),
                admin.health.last_pass(),
                None,
                admin.config.metrics_per_certificate,
            );
            drop(map);
            reply(StatusCode::OK, crate::metrics::CONTENT_TYPE, text)
        }
        (&Method::GET, ["metrics"]) => match (store.records().await, fleet().await.transpose()) {
            (Ok(records), Ok(fleet)) => reply(
                StatusCode::OK,
                crate::metrics::CONTENT_TYPE,
                crate::metrics::global().render_records(
                    &records,
                    now,
                    admin.health.ready(),
                    admin.health.last_pass(),
                    fleet.map(|f| FleetView::new(&f, &records)).as_ref(),
                    admin.config.metrics_per_certificate,
                ),
            ),
            (Err(e), _) | (_, Err(e)) => store_error(e),
        },
        (&Method::POST, ["certificates", id, "renew"]) => {
            done(admin, ops::renew(store, id, flag("force"), now).await)
        }
        (&Method::POST, ["certificates", id, "revoke"]) => {
            let reason = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("reason="))
                .unwrap_or("unspecified");
            match haproxy_acme_state::RevocationReason::parse(reason) {
                None => text(
                    StatusCode::BAD_REQUEST,
                    format!("unknown revocation reason {reason:?}\n"),
                ),
                Some(reason) => done(
                    admin,
                    crate::revoke::revoke(store, &admin.acme, id, reason, now).await,
                ),
            }
        }
        (&Method::POST, ["certificates", id, "retry"]) => {
            done(admin, ops::retry(store, id, now).await)
        }
        (&Method::POST, ["domains"]) => {
            let spec = String::from_utf8_lossy(&body);
            done(admin, ops::domains_add(store, &admin.wanted, &spec).await)
        }
        (&Method::DELETE, ["domains", id]) => done(
            admin,
            ops::domains_remove(store, &admin.config, &admin.wanted, id).await,
        ),
        (&Method::POST, ["import"]) => {
            match serde_json::from_slice::<crate::import::Found>(&body) {
                Err(e) => text(StatusCode::BAD_REQUEST, format!("import: {e}\n")),
                Ok(found) => done(
                    admin,
                    crate::import::adopt(store, &admin.config, &admin.wanted, &found, now).await,
                ),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

/// The health check's writes: a store write (the store wrapper notes its outcome) and a file in
/// the certificate directory (noted here).
async fn probes(admin: &Admin, now: i64) -> Probes {
    let store = admin
        .store
        .probe_write(now)
        .await
        .map_err(|e| e.to_string());
    let dir = admin.config.certs_dir.clone();
    let certs_dir = tokio::task::spawn_blocking(move || crate::health::probe_dir(&dir))
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r)
        .map_err(|e| format!("{}: {e}", admin.config.certs_dir.display()));
    let conditions = admin.health.conditions();
    conditions.record(Part::CertsDir, now, certs_dir.clone());
    Probes { store, certs_dir }
}

/// Answers an operator command, and passes its wake-up or reload on to the reconciler.
fn done(admin: &Admin, result: Result<ops::Done, ops::OpError>) -> Response<Body> {
    match result {
        Ok(d) => {
            for id in d.wake {
                admin.control.wake(id);
            }
            if d.reload {
                admin.control.reload();
            }
            text(StatusCode::OK, format!("{}\n", d.message))
        }
        Err(e) => {
            let status = match &e {
                ops::OpError::NotFound(_) => StatusCode::NOT_FOUND,
                ops::OpError::Refused(_) => StatusCode::CONFLICT,
                ops::OpError::Unavailable(_) => StatusCode::BAD_GATEWAY,
                ops::OpError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            text(status, format!("{e}\n"))
        }
    }
}
