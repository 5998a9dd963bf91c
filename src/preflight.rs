//! The preflight check: before the CA is told a challenge is ready, fetch it the way the CA
//! will (HTTP-01: `http://<name>/.well-known/acme-challenge/<token>` at the name's address, or
//! at `PREFLIGHT_HTTP_ADDRESS`), so a mis-routed challenge is a local, retried failure that
//! costs no CA request and no failed validation. `PREFLIGHT=off` skips it.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// How long one fetch may take (connect, request, answer), as a CA would wait at most.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of an answer read: a key authorization is under 200 bytes.
const MAX_ANSWER: usize = 4096;

/// What a preflight found wrong, in words that say what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreflightError(pub String);

impl std::fmt::Display for PreflightError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks that `http://{domain}/.well-known/acme-challenge/{token}` answers `key_authorization`
/// (trailing whitespace allowed, as the CA allows it). `address`: where to connect
/// (`PREFLIGHT_HTTP_ADDRESS`, `host:port`); `None`: `domain` resolved by the system resolver,
/// port 80, IPv6 addresses first and the next address tried only when one does not connect
/// (as Let's Encrypt does).
pub async fn http01(
    address: Option<&str>,
    domain: &str,
    token: &str,
    key_authorization: &str,
) -> Result<(), PreflightError> {
    let fail = |m: String| PreflightError(m);
    let (what, addrs) = match address {
        Some(a) => (
            a.to_string(),
            resolve(a).await.map_err(|e| {
                fail(format!(
                    "PREFLIGHT_HTTP_ADDRESS {a:?} does not resolve: {e}"
                ))
            })?,
        ),
        None => {
            let mut addrs = resolve(&format!("{domain}:80")).await.map_err(|e| {
                fail(format!(
                    "{domain} does not resolve here ({e}): the CA could not reach it either, or \
                     this host uses another DNS view (set PREFLIGHT_HTTP_ADDRESS to HAProxy's \
                     HTTP address, or PREFLIGHT=off)"
                ))
            })?;
            addrs.sort_by_key(|a| !a.is_ipv6());
            (format!("{domain}:80"), addrs)
        }
    };
    let path = format!("/.well-known/acme-challenge/{token}");
    let mut refused = Vec::new();
    for addr in &addrs {
        let stream = match tokio::time::timeout(FETCH_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                refused.push(format!("{addr}: {e}"));
                continue;
            }
            Err(_) => {
                refused.push(format!("{addr}: no connection within {FETCH_TIMEOUT:?}"));
                continue;
            }
        };
        let answer = tokio::time::timeout(FETCH_TIMEOUT, fetch(stream, domain, &path))
            .await
            .map_err(|_| {
                fail(format!(
                    "HAProxy at {addr} ({what}) did not answer the token of {domain} within \
                     {FETCH_TIMEOUT:?}"
                ))
            })?
            .map_err(|e| {
                fail(format!(
                    "HAProxy at {addr} ({what}), token of {domain}: {e}"
                ))
            })?;
        return judge(addr, domain, answer, key_authorization).map_err(fail);
    }
    Err(fail(format!(
        "no connection to {what} for the token of {domain} ({}): is HAProxy listening there, \
         and reachable from this host?",
        refused.join("; ")
    )))
}

async fn resolve(host_port: &str) -> std::io::Result<Vec<SocketAddr>> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(host_port).await?.collect();
    if addrs.is_empty() {
        return Err(std::io::Error::other("no address"));
    }
    Ok(addrs)
}

/// One GET on `stream`: the status and at most `MAX_ANSWER` bytes of the body.
async fn fetch(stream: TcpStream, host: &str, path: &str) -> Result<(u16, Vec<u8>), String> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    let conn = tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", host)
        .header(
            "user-agent",
            concat!("haproxy-acme/", env!("CARGO_PKG_VERSION"), " preflight"),
        )
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = Limited::new(resp.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    conn.abort();
    Ok((status, body))
}

/// The verdict on an answer, with what to fix.
fn judge(
    addr: &SocketAddr,
    domain: &str,
    (status, body): (u16, Vec<u8>),
    key_authorization: &str,
) -> Result<(), String> {
    let text = String::from_utf8_lossy(&body);
    if status == 200 && text.trim_end() == key_authorization {
        return Ok(());
    }
    Err(match status {
        200 => format!(
            "HAProxy at {addr} answered 200 for the token of {domain}, but not with its key \
             authorization: is /.well-known/acme-challenge/ routed to another haproxy-acme or \
             a web server?"
        ),
        301 | 302 | 307 | 308 => format!(
            "HAProxy at {addr} answered {status} (a redirect) for the token of {domain}: the CA \
             follows redirects only to port 80 or 443; route /.well-known/acme-challenge/ to us \
             before any HTTPS redirect"
        ),
        _ => format!(
            "HAProxy at {addr} answered {status} for the token of {domain}: is \
             /.well-known/acme-challenge/ routed to us?"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_judged_with_what_to_fix() {
        let a: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let ka = "tok.thumb";
        assert_eq!(
            judge(&a, "a.test", (200, b"tok.thumb\n".to_vec()), ka),
            Ok(())
        );
        let e = judge(&a, "a.test", (404, Vec::new()), ka).unwrap_err();
        assert!(
            e.contains("127.0.0.1:80 answered 404") && e.contains("routed to us"),
            "{e}"
        );
        let e = judge(&a, "a.test", (200, b"other".to_vec()), ka).unwrap_err();
        assert!(e.contains("not with its key authorization"), "{e}");
        let e = judge(&a, "a.test", (301, Vec::new()), ka).unwrap_err();
        assert!(e.contains("redirect"), "{e}");
    }
}
