//! The admin endpoint: HTTP/1.1 on a unix socket in DATA_DIR (`admin.sock`, mode 0600), off the
//! public path, and read-only on a loopback TCP address when ADMIN_LISTEN is set (for
//! Prometheus). Routes: GET /state[/ID], /status, /healthz, /metrics; POST
//! /certificates/ID/renew[?force=1], /certificates/ID/retry, /domains (body: the names),
//! /import (body: JSON lineages); DELETE /domains/ID. While the daemon runs it holds sled's exclusive lock, so the CLI reads the state
//! through here; when no daemon answers, the CLI opens the store itself.

use std::convert::Infallible;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::sync::atomic::Ordering;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::CONTENT_TYPE;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::watch;

use crate::ops;
use crate::reconciler::{unix_now, Shared};
use crate::store::Store;

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin.sock")
}

/// The JSON dump of every record in `store`, or of certificate `id` only (`None`: no such
/// certificate).
pub fn dump_json(
    store: &Store,
    id: Option<&str>,
) -> Result<Option<String>, crate::store::StoreError> {
    let records = match id {
        None => store.records()?,
        Some(id) => match store.get(id)? {
            Some(r) => vec![r],
            None => return Ok(None),
        },
    };
    let dump = haproxy_acme_state::dump::dump(&records, unix_now());
    Ok(Some(
        serde_json::to_string_pretty(&dump).expect("the dump always serializes") + "\n",
    ))
}

/// The `status` screen of every record in `store`.
pub fn status_text(store: &Store, color: bool) -> Result<String, crate::store::StoreError> {
    let records = store.records()?;
    Ok(haproxy_acme_state::dump::status_table(
        &records,
        unix_now(),
        color,
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
    shared: Arc<Shared>,
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
        let shared = shared.clone();
        tokio::spawn(async move {
            let writable = matches!(conn, Conn::Unix(_));
            let service = service_fn(move |req: Request<Incoming>| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(route(&shared, req, writable).await) }
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

fn reply(status: StatusCode, ctype: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        ctype.parse().expect("content types are valid headers"),
    );
    r
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    reply(status, "text/plain; charset=utf-8", body)
}

/// The largest request body accepted (an `import` of many certificates).
const MAX_BODY: usize = 64 * 1024 * 1024;

async fn route(shared: &Shared, req: Request<Incoming>, writable: bool) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let flag = |name: &str| query.split('&').any(|kv| kv == format!("{name}=1"));
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
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
    let now = unix_now();
    match (&method, segments.as_slice()) {
        (&Method::GET, ["state"]) | (&Method::GET, ["state", _]) => {
            let id = segments.get(1).copied();
            match dump_json(&shared.store, id) {
                Ok(Some(json)) => reply(StatusCode::OK, "application/json", json),
                Ok(None) => text(
                    StatusCode::NOT_FOUND,
                    format!("no certificate {:?}\n", id.unwrap_or_default()),
                ),
                Err(e) => store_error(e),
            }
        }
        (&Method::GET, ["status"]) => match status_text(&shared.store, flag("color")) {
            Ok(t) => text(StatusCode::OK, t),
            Err(e) => store_error(e),
        },
        (&Method::GET, ["healthz"]) => {
            let (ok, why) = health(shared, now);
            let status = if ok {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            text(status, format!("{why}\n"))
        }
        (&Method::GET, ["metrics"]) => match shared.store.records() {
            Ok(records) => reply(
                StatusCode::OK,
                crate::metrics::CONTENT_TYPE,
                crate::metrics::global().render(
                    &records,
                    now,
                    shared.ready.load(Ordering::Acquire),
                    shared.last_pass.load(Ordering::Acquire),
                ),
            ),
            Err(e) => store_error(e),
        },
        (&Method::POST, ["certificates", id, "renew"]) => {
            done(shared, ops::renew(&shared.store, id, flag("force"), now))
        }
        (&Method::POST, ["certificates", id, "retry"]) => {
            done(shared, ops::retry(&shared.store, id, now))
        }
        (&Method::POST, ["domains"]) => {
            let spec = String::from_utf8_lossy(&body);
            done(
                shared,
                ops::domains_add(&shared.store, &shared.wanted, &spec),
            )
        }
        (&Method::DELETE, ["domains", id]) => done(
            shared,
            ops::domains_remove(&shared.store, &shared.config, &shared.wanted, id),
        ),
        (&Method::POST, ["import"]) => {
            match serde_json::from_slice::<crate::import::Found>(&body) {
                Err(e) => text(StatusCode::BAD_REQUEST, format!("import: {e}\n")),
                Ok(found) => done(
                    shared,
                    crate::import::adopt(
                        &shared.store,
                        &shared.config,
                        &shared.wanted,
                        &found,
                        now,
                    ),
                ),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

/// `/healthz`: start-up done, the store takes writes, and the reconciler completes passes.
fn health(shared: &Shared, now: i64) -> (bool, String) {
    let ready = shared.ready.load(Ordering::Acquire);
    // Only probe a store that is open for business.
    let probe = if ready {
        shared.store.probe_write(now).map_err(|e| e.to_string())
    } else {
        Ok(())
    };
    verdict(ready, probe, shared.last_pass.load(Ordering::Acquire), now)
}

/// The health verdict from its inputs (pure, for tests). `last_pass` 0: the reconciler has not
/// started (it waits for HAProxy, which in compose waits for us to be healthy).
fn verdict(ready: bool, probe: Result<(), String>, last_pass: i64, now: i64) -> (bool, String) {
    if !ready {
        return (false, "starting".into());
    }
    if let Err(e) = probe {
        return (false, format!("the store does not take writes: {e}"));
    }
    match last_pass {
        0 => (true, "ok (waiting for HAProxy's runtime API)".into()),
        t if now - t > crate::reconciler::STALL_AFTER => (
            false,
            format!(
                "the reconciler has not completed a pass for {}s (expected every {}s)",
                now - t,
                crate::reconciler::HEARTBEAT.as_secs()
            ),
        ),
        _ => (true, "ok".into()),
    }
}

/// Answers an operator command, and passes its wake-up or reload on to the reconciler.
fn done(shared: &Shared, result: Result<ops::Done, ops::OpError>) -> Response<Full<Bytes>> {
    match result {
        Ok(d) => {
            for id in d.wake {
                shared.wake(id);
            }
            if d.reload {
                shared.request_reload();
            }
            text(StatusCode::OK, format!("{}\n", d.message))
        }
        Err(e) => {
            let status = match &e {
                ops::OpError::NotFound(_) => StatusCode::NOT_FOUND,
                ops::OpError::Refused(_) => StatusCode::CONFLICT,
                ops::OpError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            text(status, format!("{e}\n"))
        }
    }
}

/// An answer of the daemon.
pub struct Answer {
    pub status: StatusCode,
    pub body: String,
}

/// Sends a request to a running daemon. `Ok(None)` when no daemon listens on the socket.
pub async fn request(
    data_dir: &Path,
    method: Method,
    path: &str,
    body: Vec<u8>,
) -> io::Result<Option<Answer>> {
    let stream = match UnixStream::connect(socket_path(data_dir)).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(io::Error::other)?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .body(Full::new(Bytes::from(body)))
        .map_err(io::Error::other)?;
    let resp = sender.send_request(req).await.map_err(io::Error::other)?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(io::Error::other)?
        .to_bytes();
    Ok(Some(Answer {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    }))
}

/// GETs `path` from a running daemon. `Ok(None)` when no daemon listens on the socket; an
/// answer other than 2xx is an error carrying the daemon's message.
pub async fn get(data_dir: &Path, path: &str) -> io::Result<Option<String>> {
    match request(data_dir, Method::GET, path, Vec::new()).await? {
        None => Ok(None),
        Some(a) if a.status.is_success() => Ok(Some(a.body)),
        Some(a) => Err(io::Error::other(format!(
            "daemon answered {}: {}",
            a.status,
            a.body.trim()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_fails_when_starting_unwritable_or_stalled() {
        let now = 1_000_000;
        assert_eq!(verdict(false, Ok(()), 0, now), (false, "starting".into()));
        assert!(
            verdict(true, Ok(()), 0, now).0,
            "waiting for HAProxy is healthy"
        );
        assert_eq!(verdict(true, Ok(()), now - 5, now), (true, "ok".into()));
        let (ok, why) = verdict(true, Err("No space left on device".into()), now, now);
        assert!(!ok && why.contains("No space left"), "{why}");
        let stalled = now - crate::reconciler::STALL_AFTER - 1;
        let (ok, why) = verdict(true, Ok(()), stalled, now);
        assert!(!ok && why.contains("has not completed a pass"), "{why}");
    }
}
