//! The HTTP-01 challenge responder: a hyper HTTP/1.1 server answering
//! `GET|HEAD /.well-known/acme-challenge/{token}` from an in-memory map that the reconciler keeps
//! in step with the store. Request data never reaches the file system.
//!
//! Floods: at most `MAX_CONNECTIONS` connections are open at once, each serving one request
//! with at most `MAX_BUFFER` bytes buffered. Beyond the cap the oldest connection that has not
//! sent its request yet is closed to make room (so idle or slow connections cannot lock out a
//! validation, which sends its request at once), or, when every one is answering, the new one
//! gets a 503 and is closed at once. Descriptors and memory are bounded by the cap.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch, OwnedSemaphorePermit, Semaphore};

pub mod tls_alpn;

const PREFIX: &str = "/.well-known/acme-challenge/";
/// A client that has not sent its request headers within this time is disconnected.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections open at once. Validations come a few at a time (Let's Encrypt asks from up to 5
/// places per name, the reconciler drives at most 8 certificates at once); with the daemon's
/// other descriptors this stays under the usual soft limit of 1024 (the systemd unit raises it).
pub const MAX_CONNECTIONS: usize = 512;
/// How long a new connection waits for an evicted one to give back its place.
const EVICTION_WAIT: Duration = Duration::from_secs(1);
/// Bytes buffered per connection (hyper's minimum is 8 KiB): a challenge request is far smaller.
const MAX_BUFFER: usize = 16 * 1024;
/// The answer to a connection beyond the cap when none can be closed to make room.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\n\
                      retry-after: 1\r\ncontent-length: 0\r\n\r\n";

/// Token -> key authorization of every HTTP-01 challenge currently published, and name ->
/// key authorization of every TLS-ALPN-01 one ([`tls_alpn`]).
#[derive(Clone, Default)]
pub struct Tokens {
    http: Arc<RwLock<HashMap<String, String>>>,
    alpn: Arc<RwLock<HashMap<String, String>>>,
    /// Asked for a token the map does not hold (a fleet: the shared store, in case this node
    /// has not yet seen the notification of the record that published it).
    fallback: Arc<std::sync::OnceLock<Arc<dyn TokenSource>>>,
}

/// Where a token the map does not hold may be found.
#[async_trait::async_trait]
pub trait TokenSource: Send + Sync + 'static {
    async fn key_authorization(&self, token: &str) -> Option<String>;
}

impl Tokens {
    /// Sets where tokens missing from the map are looked for (once).
    pub fn set_fallback(&self, source: Arc<dyn TokenSource>) {
        let _ = self.fallback.set(source);
    }

    pub fn insert(&self, token: String, key_authorization: String) {
        self.http
            .write()
            .expect("tokens lock")
            .insert(token, key_authorization);
    }

    pub fn remove(&self, token: &str) {
        self.http.write().expect("tokens lock").remove(token);
    }

    pub fn get(&self, token: &str) -> Option<String> {
        self.http.read().expect("tokens lock").get(token).cloned()
    }

    pub fn len(&self) -> usize {
        self.http.read().expect("tokens lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Answers TLS-ALPN-01 for `name` with `key_authorization`.
    pub fn insert_alpn(&self, name: String, key_authorization: String) {
        let mut m = self.alpn.write().expect("tokens lock");
        m.insert(name, key_authorization);
    }

    /// Stops answering TLS-ALPN-01 for `name`, unless it was published again since with
    /// another key authorization (another order for the same name).
    pub fn remove_alpn(&self, name: &str, key_authorization: &str) {
        let mut m = self.alpn.write().expect("tokens lock");
        if m.get(name).is_some_and(|k| k == key_authorization) {
            m.remove(name);
        }
    }

    /// The key authorization TLS-ALPN-01 answers for `name`.
    pub fn get_alpn(&self, name: &str) -> Option<String> {
        self.alpn.read().expect("tokens lock").get(name).cloned()
    }
}

/// Binds the responder's socket. Done first at start-up so HAProxy has somewhere to send
/// validation traffic before anything is ordered.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// What the responder did with connections since start (for tests and the flood measurements).
#[derive(Debug, Default)]
pub struct Counters {
    pub accepted: AtomicU64,
    /// Closed before their request to make room for a new connection.
    pub evicted: AtomicU64,
    /// Answered 503 at once: the cap was reached and every connection was answering.
    pub shed: AtomicU64,
}

/// The open connections still waiting for their request, oldest first, each with the signal
/// that closes it.
#[derive(Default)]
struct Waiting {
    queue: VecDeque<(u64, oneshot::Sender<()>)>,
    next_id: u64,
}

impl Waiting {
    /// Takes `id` out of the list (its request came, or it ended); no-op if it is not there.
    fn remove(&mut self, id: u64) {
        if let Some(pos) = self.queue.iter().position(|(i, _)| *i == id) {
            self.queue.remove(pos);
        }
    }
}

/// Serves challenges on `listener` until `shutdown` turns true.
pub async fn serve(listener: TcpListener, tokens: Tokens, shutdown: watch::Receiver<bool>) {
    serve_capped(
        listener,
        tokens,
        shutdown,
        MAX_CONNECTIONS,
        Arc::new(Counters::default()),
    )
    .await
}

/// `serve` with the connection cap and counters given (tests use a small cap).
pub async fn serve_capped(
    listener: TcpListener,
    tokens: Tokens,
    mut shutdown: watch::Receiver<bool>,
    cap: usize,
    counters: Arc<Counters>,
) {
    // One permit per open connection, held by its task until the socket is closed.
    let permits = Arc::new(Semaphore::new(cap));
    let waiting = Arc::new(Mutex::new(Waiting::default()));
    // Whether the cap was reached since memory was last given back.
    let mut flooded = false;
    let mut calm = tokio::time::interval(Duration::from_secs(1));
    loop {
        let (stream, _) = tokio::select! {
            _ = calm.tick(), if flooded => {
                if permits.available_permits() == cap {
                    flooded = false;
                    release_memory();
                }
                continue;
            }
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
        counters.accepted.fetch_add(1, Ordering::Relaxed);
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                flooded = true;
                let oldest = waiting.lock().expect("responder waiting").queue.pop_front();
                let Some((_, close)) = oldest else {
                    counters.shed.fetch_add(1, Ordering::Relaxed);
                    shed(stream);
                    continue;
                };
                let _ = close.send(());
                counters.evicted.fetch_add(1, Ordering::Relaxed);
                // Its task closes the socket and gives its permit back at once.
                match tokio::time::timeout(EVICTION_WAIT, permits.clone().acquire_owned()).await {
                    Ok(Ok(p)) => p,
                    _ => {
                        counters.shed.fetch_add(1, Ordering::Relaxed);
                        shed(stream);
                        continue;
                    }
                }
            }
        };
        let (close, evicted) = oneshot::channel();
        let id = {
            let mut w = waiting.lock().expect("responder waiting");
            let id = w.next_id;
            w.next_id += 1;
            w.queue.push_back((id, close));
            id
        };
        tokio::spawn(connection(
            stream,
            tokens.clone(),
            waiting.clone(),
            id,
            evicted,
            permit,
        ));
    }
}

/// One connection, one request; closed early if evicted before its request. A connection that
/// sends nothing costs its socket and this task, not hyper's buffers.
async fn connection(
    stream: TcpStream,
    tokens: Tokens,
    waiting: Arc<Mutex<Waiting>>,
    id: u64,
    evicted: oneshot::Receiver<()>,
    _permit: OwnedSemaphorePermit,
) {
    let serve = async {
        match tokio::time::timeout(HEADER_READ_TIMEOUT, stream.readable()).await {
            Ok(Ok(())) => {}
            _ => return,
        }
        let service = {
            let waiting = waiting.clone();
            service_fn(move |req| {
                waiting.lock().expect("responder waiting").remove(id);
                let tokens = tokens.clone();
                async move {
                    let found = answer(&tokens, &req);
                    if found.status() != StatusCode::NOT_FOUND {
                        return Ok::<_, Infallible>(found);
                    }
                    Ok(ask_fallback(&tokens, &req).await.unwrap_or(found))
                }
            })
        };
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .keep_alive(false)
            .max_buf_size(MAX_BUFFER)
            .serve_connection(TokioIo::new(stream), service);
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "responder connection ended with an error");
        }
    };
    tokio::select! {
        () = serve => {}
        Ok(()) = evicted => {}
    }
    waiting.lock().expect("responder waiting").remove(id);
}

/// Gives the memory a flood's connections used back to the system once they are all closed:
/// glibc keeps freed blocks in its per-thread arenas (measured: +9 MiB resident after 512
/// connections, until `malloc_trim`).
fn release_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory of the allocator to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A 503 written without waiting (the socket's buffer takes it), then closed. What the request
/// sent so far is read first, so the close is not a reset that could discard the 503; a client
/// whose request arrives later may see a reset instead (shedding never waits).
fn shed(stream: TcpStream) {
    let mut sink = [0u8; 4096];
    while matches!(stream.try_read(&mut sink), Ok(n) if n > 0) {}
    let _ = stream.try_write(BUSY);
}

/// The answer for a token the map does not hold, when the fallback has it.
async fn ask_fallback(tokens: &Tokens, req: &Request<Incoming>) -> Option<Response<Full<Bytes>>> {
    let source = tokens.fallback.get()?;
    let token = req
        .uri()
        .path()
        .strip_prefix(PREFIX)
        .filter(|t| is_token(t))?;
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return None;
    }
    let key_auth = source.key_authorization(token).await?;
    Some(found(req.method(), key_auth))
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
        Some(key_auth) => found(method, key_auth),
    }
}

fn found(method: &Method, key_auth: String) -> Response<Full<Bytes>> {
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

    /// One request on a new connection; the raw answer.
    async fn get(addr: SocketAddr, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nhost: a.test\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn idle_connections_beyond_the_cap_make_room_for_a_request() {
        use tokio::io::AsyncReadExt;
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tokens = Tokens::default();
        tokens.insert("tok".into(), "tok.thumb".into());
        let counters = Arc::new(Counters::default());
        let (_stop, stop) = watch::channel(false);
        tokio::spawn(serve_capped(listener, tokens, stop, 8, counters.clone()));
        let mut idle = Vec::new();
        for _ in 0..50 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        while counters.accepted.load(Ordering::Relaxed) < 50 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // 42 idle connections were closed to keep 8 open; a validation still gets its answer.
        assert_eq!(counters.evicted.load(Ordering::Relaxed), 42);
        let answer = get(addr, "/.well-known/acme-challenge/tok").await;
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("tok.thumb"),
            "{answer}"
        );
        assert_eq!(counters.evicted.load(Ordering::Relaxed), 43);
        assert_eq!(counters.shed.load(Ordering::Relaxed), 0);
        // The oldest were closed by the responder, the newest are still open.
        let mut buf = [0u8; 16];
        assert_eq!(idle[0].read(&mut buf).await.unwrap(), 0);
        let newest = idle.last_mut().unwrap();
        let still_open =
            tokio::time::timeout(Duration::from_millis(100), newest.read(&mut buf)).await;
        assert!(still_open.is_err(), "the newest idle connection is kept");
    }

    #[tokio::test]
    async fn with_no_connection_to_close_a_new_one_gets_a_503_at_once() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counters = Arc::new(Counters::default());
        let (_stop, stop) = watch::channel(false);
        tokio::spawn(serve_capped(
            listener,
            Tokens::default(),
            stop,
            0,
            counters.clone(),
        ));
        let started = std::time::Instant::now();
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut answer = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut s, &mut answer)
            .await
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(counters.shed.load(Ordering::Relaxed), 1);
    }
}
