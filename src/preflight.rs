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
    let to = Target {
        setting: "PREFLIGHT_HTTP_ADDRESS",
        port: 80,
        what: "HTTP",
        check: "the token",
    };
    let (stream, addr, named) = to.connect(address, domain).await?;
    let path = format!("/.well-known/acme-challenge/{token}");
    let answer = tokio::time::timeout(FETCH_TIMEOUT, fetch(stream, domain, &path))
        .await
        .map_err(|_| {
            fail(format!(
                "HAProxy at {addr} ({named}) did not answer the token of {domain} within \
                 {FETCH_TIMEOUT:?}"
            ))
        })?
        .map_err(|e| {
            fail(format!(
                "HAProxy at {addr} ({named}), token of {domain}: {e}"
            ))
        })?;
    judge(&addr, domain, answer, key_authorization).map_err(fail)
}

/// What a check connects to and how its messages name it.
struct Target {
    /// The setting that names an address instead of the name's own (`PREFLIGHT_HTTP_ADDRESS`).
    setting: &'static str,
    /// The port of the name's own addresses (80, 443).
    port: u16,
    /// HAProxy's port, as the messages call it (`HTTP`, `TLS`).
    what: &'static str,
    /// What is checked, as the messages call it (`the token`).
    check: &'static str,
}

impl Target {
    /// A connection for the check of `domain`: to `address` (the setting), else to `domain`'s
    /// own addresses on the port, IPv6 first, the next address tried only when one does not
    /// connect (as Let's Encrypt does). Also the address connected to and how it was named.
    async fn connect(
        &self,
        address: Option<&str>,
        domain: &str,
    ) -> Result<(TcpStream, SocketAddr, String), PreflightError> {
        let fail = |m: String| PreflightError(m);
        let (named, addrs) = match address {
            Some(a) => (
                a.to_string(),
                resolve(a)
                    .await
                    .map_err(|e| fail(format!("{} {a:?} does not resolve: {e}", self.setting)))?,
            ),
            None => {
                let named = format!("{domain}:{}", self.port);
                let mut addrs = resolve(&named).await.map_err(|e| {
                    fail(format!(
                        "{domain} does not resolve here ({e}): the CA could not reach it \
                         either, or this host uses another DNS view (set {} to HAProxy's {} \
                         address, or PREFLIGHT=off)",
                        self.setting, self.what
                    ))
                })?;
                addrs.sort_by_key(|a| !a.is_ipv6());
                (named, addrs)
            }
        };
        let mut refused = Vec::new();
        for addr in addrs {
            match tokio::time::timeout(FETCH_TIMEOUT, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => return Ok((s, addr, named)),
                Ok(Err(e)) => refused.push(format!("{addr}: {e}")),
                Err(_) => refused.push(format!("{addr}: no connection within {FETCH_TIMEOUT:?}")),
            }
        }
        Err(fail(format!(
            "no connection to {named} for {} of {domain} ({}): is HAProxy listening there, and \
             reachable from this host?",
            self.check,
            refused.join("; ")
        )))
    }
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

/// Checks that a TLS handshake with ALPN `acme-tls/1` and SNI `domain` at `address`
/// (`PREFLIGHT_TLS_ADDRESS`; `None`: `domain` resolved, port 443, as for HTTP-01) negotiates
/// `acme-tls/1` and presents a certificate for `domain` with the critical acmeIdentifier
/// extension holding SHA-256(`key_authorization`) (RFC 8737 §3).
pub async fn tls_alpn01(
    address: Option<&str>,
    domain: &str,
    key_authorization: &str,
) -> Result<(), PreflightError> {
    let fail = |m: String| PreflightError(m);
    let to = Target {
        setting: "PREFLIGHT_TLS_ADDRESS",
        port: 443,
        what: "TLS",
        check: "the TLS-ALPN-01 check",
    };
    let (stream, addr, named) = to.connect(address, domain).await?;
    let at = format!("HAProxy at {addr} ({named})");
    let stream = stream.into_std().map_err(|e| fail(format!("{at}: {e}")))?;
    let host = domain.to_string();
    let (alpn, der) = tokio::task::spawn_blocking(move || acme_tls_handshake(stream, &host))
        .await
        .map_err(|e| fail(format!("{at}: {e}")))?
        .map_err(|e| {
            fail(format!(
                "{at}: the TLS handshake with ALPN acme-tls/1 for {domain} failed ({e}): is \
                 acme-tls/1 routed to us?"
            ))
        })?;
    if alpn.as_deref() != Some(b"acme-tls/1".as_slice()) {
        return Err(fail(format!(
            "{at} did not negotiate ALPN acme-tls/1 for {domain} (the normal TLS frontend \
             answered?): does HAProxy's TLS port route `req.ssl_alpn acme-tls/1` to us?"
        )));
    }
    judge_acme_certificate(&der, domain, key_authorization)
        .map_err(|e| fail(format!("{at}, {domain}: {e}")))
}

/// A handshake offering only `acme-tls/1`, accepting any certificate (a TLS-ALPN-01 one is
/// self-signed by design): the negotiated protocol and the leaf's DER.
fn acme_tls_handshake(
    stream: std::net::TcpStream,
    domain: &str,
) -> Result<(Option<Vec<u8>>, Vec<u8>), String> {
    use std::io::Write;
    stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_read_timeout(Some(FETCH_TIMEOUT)))
        .and_then(|()| stream.set_write_timeout(Some(FETCH_TIMEOUT)))
        .map_err(|e| e.to_string())?;
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"acme-tls/1".to_vec()];
    let name =
        rustls::pki_types::ServerName::try_from(domain.to_string()).map_err(|e| e.to_string())?;
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name)
        .map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(conn, stream);
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .map_err(|e| e.to_string())?;
    }
    let alpn = tls.conn.alpn_protocol().map(<[u8]>::to_vec);
    let der = tls
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .ok_or("no certificate presented")?;
    tls.conn.send_close_notify();
    let _ = tls.flush();
    Ok((alpn, der))
}

/// Accepts whatever certificate is presented (its content is judged after the handshake).
#[derive(Debug)]
struct AnyCertificate(std::sync::Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    // webpki refuses to parse a certificate with an unknown critical extension, and the
    // acmeIdentifier is one: the handshake's signatures are not checked (this is a look at
    // what HAProxy routes, not an authenticated connection; nothing is sent over it).
    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &rustls::pki_types::CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &rustls::pki_types::CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// RFC 8737 §3: exactly one SAN, `domain`, and the critical acmeIdentifier extension
/// (1.3.6.1.5.5.7.1.31) whose value is the DER OCTET STRING of SHA-256(`key_authorization`).
fn judge_acme_certificate(der: &[u8], domain: &str, key_authorization: &str) -> Result<(), String> {
    use sha2::{Digest, Sha256};
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("unreadable certificate: {e}"))?;
    let sans: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|s| {
            s.value
                .general_names
                .iter()
                .map(|n| match n {
                    GeneralName::DNSName(d) => d.to_ascii_lowercase(),
                    other => format!("{other:?}"),
                })
                .collect()
        })
        .unwrap_or_default();
    if sans != [domain.to_ascii_lowercase()] {
        return Err(format!(
            "the acme-tls/1 certificate names {sans:?}, not only {domain:?}: another challenge \
             responder answered?"
        ));
    }
    let ext = cert
        .extensions()
        .iter()
        .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
        .ok_or("the acme-tls/1 certificate has no acmeIdentifier extension")?;
    let mut want = vec![0x04, 0x20];
    want.extend_from_slice(&Sha256::digest(key_authorization.as_bytes()));
    if !ext.critical || ext.value != want.as_slice() {
        return Err(
            "the acme-tls/1 certificate's acmeIdentifier is not this challenge's (a stale or \
             another account's responder answered?)"
                .into(),
        );
    }
    Ok(())
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

    fn acme_certificate(names: &[&str], key_authorization: &str, critical: bool) -> Vec<u8> {
        use sha2::{Digest, Sha256};
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let digest: [u8; 32] = Sha256::digest(key_authorization.as_bytes()).into();
        let mut ext = rcgen::CustomExtension::new_acme_identifier(&digest);
        ext.set_criticality(critical);
        params.custom_extensions = vec![ext];
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn acme_tls_certificates_are_judged_as_rfc_8737_says() {
        let good = acme_certificate(&["a.test"], "tok.thumb", true);
        assert_eq!(judge_acme_certificate(&good, "a.test", "tok.thumb"), Ok(()));
        let e = judge_acme_certificate(&good, "a.test", "other.thumb").unwrap_err();
        assert!(e.contains("not this challenge's"), "{e}");
        let e = judge_acme_certificate(&good, "b.test", "tok.thumb").unwrap_err();
        assert!(e.contains("not only"), "{e}");
        let two = acme_certificate(&["a.test", "b.test"], "tok.thumb", true);
        assert!(judge_acme_certificate(&two, "a.test", "tok.thumb").is_err());
        let not_critical = acme_certificate(&["a.test"], "tok.thumb", false);
        assert!(judge_acme_certificate(&not_critical, "a.test", "tok.thumb").is_err());
    }
}
