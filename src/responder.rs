//! The HTTP-01 challenge responder: a hyper HTTP/1.1 server answering
//! `GET|HEAD /.well-known/acme-challenge/{token}` from an in-memory map that the reconciler keeps
//! in step with the store. Request data never reaches the file system.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

const PREFIX: &str = "/.well-known/acme-challenge/";
/// A client that has not sent its request headers within this time is disconnected.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Token -> key authorization of every challenge currently published.
#[derive(Clone, Default)]
pub struct Tokens(Arc<RwLock<HashMap<String, String>>>);

impl Tokens {
    pub fn insert(&self, token: String, key_authorization: String) {
        self.0
            .write()
            .expect("tokens lock")
            .insert(token, key_authorization);
    }

    pub fn remove(&self, token: &str) {
        self.0.write().expect("tokens lock").remove(token);
    }

    pub fn get(&self, token: &str) -> Option<String> {
        self.0.read().expect("tokens lock").get(token).cloned()
    }

    pub fn len(&self) -> usize {
        self.0.read().expect("tokens lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Binds the responder's socket. Done first at start-up so HAProxy has somewhere to send
/// validation traffic before anything is ordered.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves challenges on `listener` until `shutdown` turns true.
pub async fn serve(listener: TcpListener, tokens: Tokens, mut shutdown: watch::Receiver<bool>) {
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "responder accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let tokens = tokens.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let tokens = tokens.clone();
                async move { Ok::<_, Infallible>(answer(&tokens, &req)) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "responder connection ended with an error");
            }
        });
    }
}

/// The response for one request: pure, so it is tested without sockets.
fn answer(tokens: &Tokens, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    respond(tokens, req.method(), req.uri().path())
}

fn respond(tokens: &Tokens, method: &Method, path: &str) -> Response<Full<Bytes>> {
    let token = match path.strip_prefix(PREFIX) {
        Some(t) if is_token(t) => t,
        _ => return plain(StatusCode::NOT_FOUND, "not found\n"),
    };
    if method != Method::GET && method != Method::HEAD {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match tokens.get(token) {
        None => plain(StatusCode::NOT_FOUND, "unknown token\n"),
        Some(key_auth) => {
            let len = key_auth.len();
            let body = if method == Method::HEAD {
                Bytes::new()
            } else {
                Bytes::from(key_auth)
            };
            let mut r = Response::new(Full::new(body));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            r.headers_mut()
                .insert(CONTENT_LENGTH, HeaderValue::from(len));
            r
        }
    }
}

/// ACME tokens are base64url (RFC 8555 §8.3); anything else cannot be one of ours.
fn is_token(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 256
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body(r: Response<Full<Bytes>>) -> String {
        String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn answers_known_tokens_only() {
        let t = Tokens::default();
        t.insert("tok_en-1".into(), "tok_en-1.thumb".into());
        let path = "/.well-known/acme-challenge/tok_en-1";
        let r = respond(&t, &Method::GET, path);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(body(r).await, "tok_en-1.thumb");
        let r = respond(&t, &Method::HEAD, path);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[CONTENT_LENGTH], "14");
        assert_eq!(body(r).await, "");
        let r = respond(&t, &Method::POST, path);
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()[ALLOW], "GET, HEAD");
        for p in [
            "/.well-known/acme-challenge/other",
            "/.well-known/acme-challenge/",
            "/.well-known/acme-challenge/../../etc/passwd",
            "/.well-known/acme-challenge/a/b",
            "/",
        ] {
            assert_eq!(
                respond(&t, &Method::GET, p).status(),
                StatusCode::NOT_FOUND,
                "{p}"
            );
        }
        t.remove("tok_en-1");
        assert_eq!(
            respond(&t, &Method::GET, path).status(),
            StatusCode::NOT_FOUND
        );
        assert!(t.is_empty());
    }
}
