//! The admin endpoint: HTTP/1.1 on a unix socket in DATA_DIR (`admin.sock`, mode 0600), off the
//! public path. While the daemon runs it holds sled's exclusive lock, so the CLI reads the state
//! through here; when no daemon answers, the CLI opens the store itself.

use std::convert::Infallible;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::CONTENT_TYPE;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

use crate::reconciler::{unix_now, Shared};
use crate::store::Store;

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin.sock")
}

/// The JSON dump of every record in `store`.
pub fn dump_json(store: &Store) -> Result<String, crate::store::StoreError> {
    let records = store.records()?;
    let dump = haproxy_acme_state::dump::dump(&records, unix_now());
    Ok(serde_json::to_string_pretty(&dump).expect("the dump always serializes") + "\n")
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

pub async fn serve(
    listener: UnixListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    // As in the responder: do not spin on a persistent error (out of fds).
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let shared = shared.clone();
                async move {
                    let color = req.uri().query() == Some("color=1");
                    Ok::<_, Infallible>(route(&shared, req.method(), req.uri().path(), color))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn route(shared: &Shared, method: &Method, path: &str, color: bool) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, ctype: &'static str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut()
            .insert(CONTENT_TYPE, ctype.parse().expect("static header"));
        r
    };
    match (method, path) {
        (&Method::GET, "/state") => match dump_json(&shared.store) {
            Ok(json) => reply(StatusCode::OK, "application/json", json),
            Err(e) => reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                format!("{e}\n"),
            ),
        },
        (&Method::GET, "/status") => match status_text(&shared.store, color) {
            Ok(text) => reply(StatusCode::OK, "text/plain; charset=utf-8", text),
            Err(e) => reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                format!("{e}\n"),
            ),
        },
        (&Method::GET, "/healthz") => {
            if shared.ready.load(std::sync::atomic::Ordering::Acquire) {
                reply(StatusCode::OK, "text/plain", "ok\n".into())
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "starting\n".into(),
                )
            }
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// Asks a running daemon for `path`. `Ok(None)` when no daemon listens on the socket.
pub async fn get(data_dir: &Path, path: &str) -> io::Result<Option<String>> {
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
    let req = Request::get(path)
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .map_err(io::Error::other)?;
    let resp = sender.send_request(req).await.map_err(io::Error::other)?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(io::Error::other)?
        .to_bytes();
    let body = String::from_utf8_lossy(&body).into_owned();
    if status.is_success() {
        Ok(Some(body))
    } else {
        Err(io::Error::other(format!(
            "daemon answered {status}: {}",
            body.trim()
        )))
    }
}
