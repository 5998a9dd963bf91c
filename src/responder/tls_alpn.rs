//! The TLS-ALPN-01 challenge responder (RFC 8737): a TLS listener (`TLS_ALPN_LISTEN`) that
//! HAProxy's :443 sends every ClientHello offering ALPN `acme-tls/1` to. It speaks that protocol
//! only, and presents, for the SNI name, a self-signed certificate carrying the critical
//! acmeIdentifier extension (SHA-256 of the key authorization), made in memory from the
//! challenges the records hold ([`Tokens`], kept in step with the store by the reconciler);
//! nothing is written to disk. A handshake without `acme-tls/1`, without SNI, or for a name with
//! no challenge published gets no certificate and fails. The connection carries no PROXY header:
//! HAProxy routes to it without `send-proxy` (the CA's address is of no use here).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use super::Tokens;

/// The ALPN protocol of RFC 8737 §6.2.
pub const ACME_TLS_1: &[u8] = b"acme-tls/1";
/// Handshakes at once: validations come a few at a time (Let's Encrypt asks from up to 5
/// places per name). A connection beyond it is closed at once.
const MAX_CONNECTIONS: usize = 64;
/// A handshake not done within this time is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the TLS-ALPN-01 responder's socket.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// The server configuration: `acme-tls/1` only, certificates from `tokens` by SNI.
pub fn server_config(tokens: Tokens) -> Result<ServerConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver { tokens }));
    config.alpn_protocols = vec![ACME_TLS_1.to_vec()];
    Ok(config)
}

/// Serves TLS-ALPN-01 handshakes on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    tokens: Tokens,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), rustls::Error> {
    let acceptor = TlsAcceptor::from(Arc::new(server_config(tokens)?));
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "TLS-ALPN-01 responder accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return Ok(()),
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            continue; // dropped: closed at once
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            handshake(acceptor, stream, peer).await;
            drop(permit);
        });
    }
}

/// One handshake; the connection is closed once it is done (RFC 8737 §3: the CA closes it
/// after checking the certificate, no application data is exchanged).
async fn handshake(acceptor: TlsAcceptor, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(mut tls)) => {
            let name = tls
                .get_ref()
                .1
                .server_name()
                .unwrap_or_default()
                .to_string();
            tracing::debug!(%peer, name, "TLS-ALPN-01 challenge certificate presented");
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
        }
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS-ALPN-01 handshake failed"),
        Err(_) => tracing::debug!(%peer, "TLS-ALPN-01 handshake timed out"),
    }
}

/// Picks the challenge certificate by SNI, only for a ClientHello offering `acme-tls/1`.
#[derive(Debug)]
struct Resolver {
    tokens: Tokens,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens")
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let acme = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_1));
        let name = hello.server_name()?.to_ascii_lowercase();
        if !acme {
            tracing::debug!(
                name,
                "TLS-ALPN-01 responder: a handshake without acme-tls/1"
            );
            return None;
        }
        let Some(key_authorization) = self.tokens.get_alpn(&name) else {
            tracing::debug!(
                name,
                "TLS-ALPN-01 responder: no challenge published for the name"
            );
            return None;
        };
        match certified_key(&name, &key_authorization) {
            Ok(k) => Some(Arc::new(k)),
            Err(e) => {
                tracing::warn!(name, error = %e, "TLS-ALPN-01 certificate could not be made");
                None
            }
        }
    }
}

/// The challenge certificate for `name` with its signing key.
fn certified_key(name: &str, key_authorization: &str) -> Result<CertifiedKey, String> {
    let (cert, key) =
        crate::pki::tls_alpn_certificate(name, key_authorization).map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key));
    let signer =
        rustls::crypto::aws_lc_rs::sign::any_ecdsa_type(&key).map_err(|e| e.to_string())?;
    Ok(CertifiedKey::new(vec![CertificateDer::from(cert)], signer))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_certificate_names_the_host_and_carries_the_digest_critically() {
        let (der, _) = crate::pki::tls_alpn_certificate("a.test", "tok.thumb").unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier");
        assert!(ext.critical);
        use sha2::Digest;
        let mut want = vec![0x04, 0x20];
        want.extend_from_slice(&sha2::Sha256::digest(b"tok.thumb"));
        assert_eq!(ext.value, want.as_slice());
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert_eq!(
            format!("{:?}", san.value.general_names),
            "[DNSName(\"a.test\")]"
        );
    }
}
