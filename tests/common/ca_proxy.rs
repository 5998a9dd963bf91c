//! A TLS proxy in front of pebble that changes what the CA says, for CA behaviours pebble has
//! no knob for: a directory that (no longer) offers `renewalInfo`, new-order answers that do
//! not echo `replaces` (RFC 9773 §5 requires it; not every CA does it), and a CA that answers a
//! new order carrying `replaces` with an error no RFC names (pebble's own bug #550, ZeroSSL). Everything else is
//! pebble's own answer: the proxy passes the client's `Host`, so pebble's URLs name the proxy
//! and every later request goes through it too.

use std::convert::Infallible;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::Env;

type Upstream = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

struct Shared {
    upstream_port: u16,
    client: Upstream,
    strip_renewal_info: AtomicBool,
    strip_replaces: AtomicBool,
    refuse_replaces: AtomicBool,
    refused: AtomicUsize,
}

/// The proxy; stopped on drop.
pub struct CaProxy {
    pub port: u16,
    shared: Arc<Shared>,
    _rt: tokio::runtime::Runtime,
}

impl CaProxy {
    /// Starts the proxy in front of `env`'s pebble, with pebble's listener certificate (so the
    /// daemon's `ACME_CA_BUNDLE` trusts it as it trusts pebble). Passes everything unchanged
    /// until told otherwise.
    pub fn start(env: &Env) -> CaProxy {
        let d = env.dir.path();
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(d.join("pebble-cert.pem"))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
        let key = PrivateKeyDer::from_pem_file(d.join("pebble-key.pem")).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&env.listener_ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let client_tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = rt.block_on(async {
            let connector = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(client_tls)
                .https_only()
                .enable_http1()
                .build();
            Arc::new(Shared {
                upstream_port: env.acme_port,
                client: Client::builder(TokioExecutor::new()).build(connector),
                strip_renewal_info: AtomicBool::new(false),
                strip_replaces: AtomicBool::new(false),
                refuse_replaces: AtomicBool::new(false),
                refused: AtomicUsize::new(0),
            })
        });
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let accepting = shared.clone();
        rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, shared) = (acceptor.clone(), accepting.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(forward(req, &shared).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        CaProxy {
            port,
            shared,
            _rt: rt,
        }
    }

    /// The directory URL through the proxy.
    pub fn directory_url(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.port)
    }

    /// From now on the directory offers no `renewalInfo` (a client reads it when it connects).
    pub fn strip_renewal_info(&self, on: bool) {
        self.shared.strip_renewal_info.store(on, Ordering::SeqCst);
    }

    /// From now on orders come back without their `replaces` field.
    pub fn strip_replaces(&self, on: bool) {
        self.shared.strip_replaces.store(on, Ordering::SeqCst);
    }

    /// From now on a new-order request carrying `replaces` is not passed on: it is answered
    /// with pebble 2.10's own answer when the serial's first byte is >= 0x80
    /// (letsencrypt/pebble#550), a 500 `serverInternal`.
    pub fn refuse_replaces(&self, on: bool) {
        self.shared.refuse_replaces.store(on, Ordering::SeqCst);
    }

    /// How many new-order requests were refused so.
    pub fn refused(&self) -> usize {
        self.shared.refused.load(Ordering::SeqCst)
    }
}

/// Whether a JWS-signed request body's payload has `field` (base64url JSON).
fn payload_has(body: &[u8], field: &str) -> bool {
    use base64::Engine as _;
    let Ok(jws) = serde_json::from_slice::<serde_json::Value>(body) else {
        return false;
    };
    let Some(payload) = jws["payload"].as_str() else {
        return false;
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|p| serde_json::from_slice::<serde_json::Value>(&p).ok())
        .is_some_and(|p| p.get(field).is_some())
}

/// pebble's 500 for a `replaces` it cannot find, with a fresh nonce from pebble (the request's
/// nonce was not used: pebble never saw it).
async fn refuse_replaces(shared: &Shared) -> Response<Full<Bytes>> {
    shared.refused.fetch_add(1, Ordering::SeqCst);
    let head = Request::head(format!(
        "https://127.0.0.1:{}/nonce-plz",
        shared.upstream_port
    ))
    .body(Full::new(Bytes::new()))
    .unwrap();
    let nonce = match shared.client.request(head).await {
        Ok(a) => a.headers().get("replay-nonce").cloned(),
        Err(_) => None,
    };
    let mut answer = Response::builder()
        .status(500)
        .header("content-type", "application/problem+json");
    if let Some(n) = nonce {
        answer = answer.header("replay-nonce", n);
    }
    let problem = serde_json::json!({
        "type": "urn:ietf:params:acme:error:serverInternal",
        "detail": "could not find an order for the given certificate: could not find order resulting in the given certificate serial number",
        "status": 500
    });
    answer
        .body(Full::new(Bytes::from(problem.to_string())))
        .unwrap()
}

/// Sends `req` to pebble and returns its answer, edited as configured.
async fn forward(req: Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let path = parts.uri.path().to_string();
    if path.starts_with("/order-plz")
        && shared.refuse_replaces.load(Ordering::SeqCst)
        && payload_has(&body, "replaces")
    {
        return refuse_replaces(shared).await;
    }
    let target = format!(
        "https://127.0.0.1:{}{}",
        shared.upstream_port,
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut up = Request::builder().method(parts.method.clone()).uri(target);
    for (k, v) in &parts.headers {
        up = up.header(k, v);
    }
    let answer = match shared
        .client
        .request(up.body(Full::new(body)).unwrap())
        .await
    {
        Ok(a) => a,
        Err(e) => {
            return Response::builder()
                .status(502)
                .body(Full::new(Bytes::from(format!("proxy: {e}"))))
                .unwrap()
        }
    };
    let (mut parts, body) = answer.into_parts();
    let mut bytes = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let drop_field = if path == "/dir" && shared.strip_renewal_info.load(Ordering::SeqCst) {
        Some("renewalInfo")
    } else if (path.starts_with("/order-plz") || path.starts_with("/my-order/"))
        && shared.strip_replaces.load(Ordering::SeqCst)
    {
        Some("replaces")
    } else {
        None
    };
    if let Some(field) = drop_field {
        if let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&bytes) {
            if let Some(o) = v.as_object_mut() {
                o.remove(field);
            }
            bytes = Bytes::from(serde_json::to_vec(&v).unwrap());
        }
    }
    parts.headers.remove(hyper::header::CONTENT_LENGTH);
    parts.headers.remove(hyper::header::TRANSFER_ENCODING);
    Response::from_parts(parts, Full::new(bytes))
}
