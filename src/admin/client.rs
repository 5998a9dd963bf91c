//! The typed client of the admin socket: what the CLI asks a running daemon, and its answer as
//! an outcome the CLI turns into an exit code. Keeps hyper inside `admin`.

use std::io;
use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

use super::socket_path;

/// A request to the daemon.
#[derive(Debug, Clone)]
pub enum Ask {
    /// The JSON dump of every certificate, or of one.
    State(Option<String>),
    /// The `status` screen.
    Status {
        color: bool,
        /// One certificate's line only.
        id: Option<String>,
        /// The table of every certificate, however many (`status --all`).
        all: bool,
    },
    /// The `status --check` report.
    Check,
    Healthz,
    Renew {
        id: String,
        force: bool,
    },
    Retry {
        id: String,
    },
    /// `revoke ID --reason R` (R as RFC 5280 names it).
    Revoke {
        id: String,
        reason: &'static str,
    },
    DomainsAdd {
        spec: String,
    },
    DomainsRemove {
        id: String,
    },
    /// `import certbot`: the lineages read by the CLI, as JSON.
    Import {
        lineages_json: Vec<u8>,
    },
    /// `backup FILE`: a snapshot of the store (keys included; unix socket only).
    Backup,
    /// The ACME account URL (`dns-persist-record`).
    Account,
}

impl Ask {
    fn request(&self) -> (Method, String, Vec<u8>) {
        match self {
            Ask::State(None) => (Method::GET, "/state".into(), Vec::new()),
            Ask::State(Some(id)) => (Method::GET, format!("/state/{id}"), Vec::new()),
            Ask::Status { color, id, all } => {
                let path = match id {
                    Some(id) => format!("/status/{id}"),
                    None => "/status".into(),
                };
                let query = match (*color, *all) {
                    (false, false) => "",
                    (true, false) => "?color=1",
                    (false, true) => "?all=1",
                    (true, true) => "?color=1&all=1",
                };
                (Method::GET, format!("{path}{query}"), Vec::new())
            }
            Ask::Check => (Method::GET, "/check".into(), Vec::new()),
            Ask::Healthz => (Method::GET, "/healthz".into(), Vec::new()),
            Ask::Renew { id, force } => (
                Method::POST,
                format!(
                    "/certificates/{id}/renew{}",
                    if *force { "?force=1" } else { "" }
                ),
                Vec::new(),
            ),
            Ask::Retry { id } => (
                Method::POST,
                format!("/certificates/{id}/retry"),
                Vec::new(),
            ),
            Ask::Revoke { id, reason } => (
                Method::POST,
                format!("/certificates/{id}/revoke?reason={reason}"),
                Vec::new(),
            ),
            Ask::DomainsAdd { spec } => {
                (Method::POST, "/domains".into(), spec.clone().into_bytes())
            }
            Ask::DomainsRemove { id } => (Method::DELETE, format!("/domains/{id}"), Vec::new()),
            Ask::Import { lineages_json } => {
                (Method::POST, "/import".into(), lineages_json.clone())
            }
            Ask::Backup => (Method::GET, "/backup".into(), Vec::new()),
            Ask::Account => (Method::GET, "/account".into(), Vec::new()),
        }
    }
}

/// How the daemon took a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// No such certificate.
    NotFound,
    /// Refused or invalid.
    Refused,
    /// Anything else (its HTTP status): the daemon failed (a store error, say) or is unhealthy.
    Failed(u16),
}

/// An answer of the daemon.
#[derive(Debug, Clone)]
pub struct Answer {
    pub outcome: Outcome,
    pub body: String,
}

/// The admin socket of a DATA_DIR.
pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(data_dir: &Path) -> Client {
        Client {
            socket: socket_path(data_dir),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends `ask` to a running daemon. `Ok(None)` when no daemon listens on the socket.
    pub async fn send(&self, ask: &Ask) -> io::Result<Option<Answer>> {
        let Some(resp) = self.request(ask).await? else {
            return Ok(None);
        };
        let outcome = outcome(resp.status().as_u16());
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(io::Error::other)?
            .to_bytes();
        Ok(Some(Answer {
            outcome,
            body: String::from_utf8_lossy(&body).into_owned(),
        }))
    }

    /// [`Client::send`], with a successful answer's body written to `out` as it arrives (a
    /// `state dump` of any size), not kept: its [`Answer::body`] is empty.
    pub async fn send_to(
        &self,
        ask: &Ask,
        out: &mut (dyn io::Write + Send),
    ) -> io::Result<Option<Answer>> {
        let Some(resp) = self.request(ask).await? else {
            return Ok(None);
        };
        let outcome = outcome(resp.status().as_u16());
        if outcome != Outcome::Done {
            let body = resp.into_body().collect().await.map_err(io::Error::other)?;
            let body = String::from_utf8_lossy(&body.to_bytes()).into_owned();
            return Ok(Some(Answer { outcome, body }));
        }
        let mut body = resp.into_body();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.map_err(io::Error::other)?.into_data() {
                out.write_all(&data)?;
            }
        }
        out.flush()?;
        Ok(Some(Answer {
            outcome,
            body: String::new(),
        }))
    }

    async fn request(&self, ask: &Ask) -> io::Result<Option<hyper::Response<Incoming>>> {
        let stream = match UnixStream::connect(&self.socket).await {
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
        let (method, path, body) = ask.request();
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .body(Full::new(Bytes::from(body)))
            .map_err(io::Error::other)?;
        let resp = sender.send_request(req).await.map_err(io::Error::other)?;
        Ok(Some(resp))
    }
}

fn outcome(status: u16) -> Outcome {
    match status {
        200..=299 => Outcome::Done,
        404 => Outcome::NotFound,
        400 | 409 => Outcome::Refused,
        other => Outcome::Failed(other),
    }
}
