//! The HTTPS client instant-acme runs on: the public web roots plus `ACME_CA_BUNDLE`,
//! `TCP_NODELAY`, request metrics (`badNonce` answers counted), the `Retry-After` of error
//! responses (which instant-acme drops) noted for the failure of the call that got it, and
//! error responses without a problem document (pebble's bare 404 for an order it does not
//! know, a proxy's HTML page) given one that names their status.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use haproxy_acme_state::{FailureKind, Step, UnixTime};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use instant_acme::{BodyWrapper, BytesResponse};
use rustls_pki_types::CertificateDer;

use super::AcmeError;

/// The HTTPS client for the CA: the public web roots plus `ACME_CA_BUNDLE`, if given.
pub fn http_client(bundle: Option<&Path>) -> Result<Box<dyn instant_acme::HttpClient>, AcmeError> {
    let err = |m: String| AcmeError::new(Step::Account, FailureKind::Permanent, m);
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = bundle {
        let certs = std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|pem| crate::pki::certificates_der(&pem).map_err(|e| e.to_string()))
            .map_err(|e| err(format!("ACME_CA_BUNDLE {}: {e}", path.display())))?;
        let mut added = 0;
        for c in certs {
            roots
                .add(CertificateDer::from(c))
                .map_err(|e| err(format!("ACME_CA_BUNDLE {}: {e}", path.display())))?;
            added += 1;
        }
        if added == 0 {
            return Err(err(format!(
                "ACME_CA_BUNDLE {}: no certificate in it",
                path.display()
            )));
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // TCP_NODELAY: HTTP/2 sends a request's headers and body as separate frames; with Nagle
    // on, the body waits for the CA's delayed ACK (~40 ms on Linux) on every POST. Measured:
    // one issuance on pebble 0.43 s with Nagle, see BENCHMARKS.md for without.
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    let client: HyperClient<_, BodyWrapper<hyper::body::Bytes>> =
        HyperClient::builder(TokioExecutor::new()).build(connector);
    Ok(Box::new(RetryAfterClient(Box::new(client))))
}

/// Whether a request never got an answer from the CA: the HTTP client's own failure (connect,
/// TLS, connection reset), as opposed to an answer we could not use.
pub(super) fn not_reached(e: &instant_acme::Error) -> bool {
    match e {
        instant_acme::Error::Hyper(_) => true,
        instant_acme::Error::Other(e) => e.is::<hyper_util::client::legacy::Error>(),
        _ => false,
    }
}

tokio::task_local! {
    /// The last `Retry-After` the CA sent with an error response during the current ACME call
    /// (set up by `with_retry_after`).
    static RETRY_AFTER: Cell<Option<UnixTime>>;
}

tokio::task_local! {
    /// The `Location` of the last `201 Created` answer during the current ACME call: the URL
    /// of an order the CA created even when instant-acme then refuses the answer (a CA that
    /// does not echo `replaces`, RFC 9773 §5), so the order is kept rather than created twice.
    static CREATED: RefCell<Option<String>>;
}

/// The URL the CA gave the last object it created (`201 Created` + `Location`) during the
/// current call of `with_retry_after`.
pub(super) fn created_location() -> Option<String> {
    CREATED.try_with(|c| c.borrow().clone()).ok().flatten()
}

/// The HTTP client handed to instant-acme, wrapped to note the `Retry-After` header of error
/// responses, which instant-acme drops. The note goes to the calling task (a task-local), so
/// concurrent certificates never see each other's.
struct RetryAfterClient(Box<dyn instant_acme::HttpClient>);

impl instant_acme::HttpClient for RetryAfterClient {
    fn request(
        &self,
        req: hyper::Request<BodyWrapper<hyper::body::Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let method = req.method().to_string();
        let path = req.uri().path().to_string();
        let fut = self.0.request(req);
        Box::pin(async move {
            let rsp = match fut.await {
                Ok(r) => r,
                Err(e) => {
                    crate::metrics::global().acme_request(&method, &path, None);
                    return Err(e);
                }
            };
            let mut rsp = rsp;
            let status = rsp.parts.status;
            crate::metrics::global().acme_request(&method, &path, Some(status.as_u16()));
            if status == hyper::StatusCode::CREATED {
                if let Some(url) = rsp
                    .parts
                    .headers
                    .get(hyper::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                {
                    let _ = CREATED.try_with(|c| *c.borrow_mut() = Some(url.to_string()));
                }
            }
            if status.is_client_error() || status.is_server_error() {
                let body = rsp
                    .body
                    .into_bytes()
                    .await
                    .map_err(instant_acme::Error::Other)?;
                let (body, bad_nonce) = problem_body(status, body);
                if bad_nonce {
                    crate::metrics::global().bad_nonce();
                }
                rsp.body = Box::new(body);
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64);
                if let Some(t) = rsp
                    .parts
                    .headers
                    .get(hyper::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, now))
                {
                    let _ = RETRY_AFTER.try_with(|c| c.set(Some(t)));
                }
            }
            Ok(rsp)
        })
    }
}

/// The body of an error response as a problem document (RFC 7807), and whether it is a
/// `badNonce`. A body that is not one becomes one with the HTTP status (so the status reaches
/// the classification: a bare 404 is an order the CA does not know) and the start of the text.
fn problem_body(status: hyper::StatusCode, body: hyper::body::Bytes) -> (hyper::body::Bytes, bool) {
    if let Ok(p) = serde_json::from_slice::<instant_acme::Problem>(&body) {
        return (body, super::problem::is_bad_nonce_problem(&p));
    }
    let text: String = String::from_utf8_lossy(&body)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    let text = text.trim();
    let detail = if text.is_empty() {
        format!("HTTP {status}, no problem document")
    } else {
        format!("HTTP {status}, no problem document: {text}")
    };
    let doc = serde_json::json!({
        "type": "about:blank",
        "detail": detail,
        "status": status.as_u16(),
    });
    (serde_json::to_vec(&doc).unwrap_or_default().into(), false)
}

/// Runs one ACME call; a failure carries the CA's `Retry-After` header when it sent one (the
/// header wins over a time found in the problem text).
pub(super) async fn with_retry_after<T>(
    call: impl Future<Output = Result<T, AcmeError>>,
) -> Result<T, AcmeError> {
    let call = CREATED.scope(RefCell::new(None), call);
    RETRY_AFTER
        .scope(Cell::new(None), async {
            let result = call.await;
            let header = RETRY_AFTER.with(Cell::get);
            result.map_err(|mut e| {
                if header.is_some() {
                    e.retry_after = header;
                }
                e
            })
        })
        .await
}

/// A `Retry-After` value: delay-seconds or an HTTP-date (RFC 9110 §10.2.3).
fn parse_retry_after(value: &str, now: UnixTime) -> Option<UnixTime> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u32>() {
        return Some(now + i64::from(secs));
    }
    let t = httpdate::parse_http_date(v).ok()?;
    t.duration_since(UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs() as i64)
}

/// The time in a rate-limit problem's text, as Let's Encrypt writes it:
/// "..., retry after 2025-02-03 04:05:06 UTC: see https://...".
pub(super) fn retry_after_from_detail(detail: &str) -> Option<UnixTime> {
    let rest = detail.split("retry after ").nth(1)?;
    let stamp = rest.get(..19)?;
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    let t = time::PrimitiveDateTime::parse(stamp, format).ok()?;
    Some(t.assume_utc().unix_timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;
    use instant_acme::HttpClient;

    #[test]
    fn retry_after_header_forms() {
        assert_eq!(parse_retry_after("120", 1000), Some(1120));
        assert_eq!(parse_retry_after(" 0 ", 1000), Some(1000));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", 0),
            Some(784111777)
        );
        assert_eq!(parse_retry_after("soon", 0), None);
        assert_eq!(parse_retry_after("-5", 0), None);
    }

    #[test]
    fn retry_after_in_a_lets_encrypt_problem() {
        let detail = "too many certificates (5) already issued for this exact set of identifiers in \
                      the last 168h0m0s, retry after 2025-02-03 04:05:06 UTC: see https://letsencrypt.org/docs/rate-limits/";
        assert_eq!(retry_after_from_detail(detail), Some(1738555506));
        assert_eq!(retry_after_from_detail("no time here"), None);
        assert_eq!(retry_after_from_detail("retry after tomorrow"), None);
    }

    /// An in-process HTTP client standing in for the network: it answers every request with
    /// the given status and headers. (The CA's behaviour is tested against pebble; pebble sends
    /// no Retry-After, so the capture itself is tested here.)
    struct Canned(u16, Option<&'static str>);

    impl instant_acme::HttpClient for Canned {
        fn request(
            &self,
            _req: hyper::Request<BodyWrapper<hyper::body::Bytes>>,
        ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>>
        {
            let mut rsp = hyper::Response::builder().status(self.0);
            if let Some(v) = self.1 {
                rsp = rsp.header(hyper::header::RETRY_AFTER, v);
            }
            let rsp = rsp
                .body(http_body_util::Full::new(hyper::body::Bytes::new()))
                .unwrap();
            Box::pin(async move { Ok(BytesResponse::from(rsp)) })
        }
    }

    #[test]
    fn an_error_without_a_problem_document_gets_one_with_its_status() {
        let not_found = hyper::StatusCode::NOT_FOUND;
        let (body, bad) = problem_body(not_found, hyper::body::Bytes::new());
        let p: instant_acme::Problem = serde_json::from_slice(&body).unwrap();
        assert_eq!((p.status, bad), (Some(404), false));
        let e = AcmeError::from_acme(Step::Order, instant_acme::Error::Api(p));
        assert!(e.order_dead, "a bare 404 is an order the CA does not know");
        let gateway = hyper::StatusCode::BAD_GATEWAY;
        let html = hyper::body::Bytes::from_static(b"<html>\n<b>502</b>\n</html>");
        let (body, _) = problem_body(gateway, html);
        let p: instant_acme::Problem = serde_json::from_slice(&body).unwrap();
        assert_eq!(p.status, Some(502));
        assert_eq!(
            p.detail.as_deref(),
            Some("HTTP 502 Bad Gateway, no problem document: <html> <b>502</b> </html>")
        );
        // A problem document passes unchanged; a badNonce is recognised.
        let doc = br#"{"type":"urn:ietf:params:acme:error:badNonce","detail":"x","status":400}"#;
        let doc = hyper::body::Bytes::from_static(doc);
        assert_eq!(
            problem_body(hyper::StatusCode::BAD_REQUEST, doc.clone()),
            (doc, true)
        );
    }

    async fn call(client: &RetryAfterClient) -> Result<(), AcmeError> {
        let req = hyper::Request::get("https://ca.test/x")
            .body(BodyWrapper::default())
            .unwrap();
        client
            .request(req)
            .await
            .map_err(|e| AcmeError::from_acme(Step::Order, e))?;
        Err(AcmeError::new(
            Step::Order,
            FailureKind::RateLimited,
            "refused",
        ))
    }

    #[tokio::test]
    async fn the_header_of_an_error_response_reaches_the_failure() {
        let limited = RetryAfterClient(Box::new(Canned(429, Some("3600"))));
        let e = with_retry_after(call(&limited)).await.unwrap_err();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let t = e.retry_after.expect("captured");
        assert!((now + 3590..=now + 3610).contains(&t), "{t} vs {now}");
        // A Retry-After on a successful poll is instant-acme's business, not a failure's.
        let polling = RetryAfterClient(Box::new(Canned(200, Some("3600"))));
        assert_eq!(
            with_retry_after(call(&polling))
                .await
                .unwrap_err()
                .retry_after,
            None
        );
        // Outside `with_retry_after` nothing is recorded and nothing panics.
        assert!(call(&limited).await.is_err());
    }
}
