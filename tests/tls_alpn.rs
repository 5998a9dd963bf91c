//! TLS-ALPN-01 (RFC 8737) end to end through HAProxy, against pebble 2.10 whose `tlsPort` is
//! HAProxy's TLS port: a certificate with `challenge=tls-alpn-01` is validated through :443's
//! `acme-tls/1` routing to the daemon's TLS-ALPN-01 responder, issued and served by HAProxy; on
//! the same port, ordinary HTTPS still gets the issued certificate and an HTTP answer from the
//! application, and the client's address (its source port, too) reaches the TLS frontend
//! through the PROXY v2 hop (HAProxy's log). The option without TLS_ALPN_LISTEN is refused at
//! start, and once validated the responder answers no `acme-tls/1` handshake for the name.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{wait_until, Env, Options};

/// A stand-in application on a free port: answers every request `200` with body `app`.
fn start_app() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                // The request head, up to its blank line.
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                    if line == "\r\n" {
                        let mut s = &stream;
                        let _ = s.write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\napp",
                        );
                        return;
                    }
                    line.clear();
                }
            });
        }
    });
    port
}

/// An HTTPS request through HAProxy's TLS port with SNI `name`, verified against `root`:
/// (the local port it came from, the leaf's DER, the HTTP answer).
fn https_get(env: &Env, name: &str, root: &Path) -> (u16, Vec<u8>, String) {
    let mut roots = rustls::RootCertStore::empty();
    for p in pem::parse_many(std::fs::read(root).unwrap()).unwrap() {
        roots
            .add(rustls_pki_types::CertificateDer::from(p.into_contents()))
            .unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let server_name = rustls_pki_types::ServerName::try_from(name.to_string()).unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), server_name).unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", env.https_port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let local_port = tcp.local_addr().unwrap().port();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(format!("GET / HTTP/1.1\r\nhost: {name}\r\n\r\n").as_bytes())
        .unwrap();
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer);
    let leaf = tls.conn.peer_certificates().unwrap()[0].to_vec();
    (
        local_port,
        leaf,
        String::from_utf8_lossy(&answer).into_owned(),
    )
}

/// Whether an `acme-tls/1` handshake for `name` through HAProxy's TLS port completes.
fn acme_tls_handshake(env: &Env, name: &str) -> bool {
    let out = Command::new("openssl")
        .args(["s_client", "-connect"])
        .arg(format!("127.0.0.1:{}", env.https_port))
        .args(["-servername", name, "-alpn", "acme-tls/1"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains("ALPN protocol: acme-tls/1")
}

#[test]
fn tls_alpn_01_validates_through_haproxy_and_https_keeps_working_on_the_same_port() {
    let app = start_app();
    let env = Env::start_opts(Options {
        app_port: Some(app),
        ..Default::default()
    });
    let domains = "alpn.test,www.alpn.test challenge=tls-alpn-01;plain.test";

    // Without the responder's address the option is refused at start, naming the setting.
    let (code, out) = env.run_to_exit(domains, &[("TLS_ALPN_LISTEN", "")]);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("\"alpn.test\" has challenge=tls-alpn-01 but TLS_ALPN_LISTEN is not set"),
        "{out}"
    );

    let mut daemon = env.start_daemon(domains);
    let root = env.issuer_root();
    let served = || {
        ["alpn.test", "www.alpn.test", "plain.test"]
            .iter()
            .all(|n| env.served_and_valid(n, &root).is_some())
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !served() {
        daemon.assert_running();
        assert!(
            std::time::Instant::now() < deadline,
            "the three names not served after 60 s; daemon log:\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    assert!(
        daemon
            .log_text()
            .contains("preflight passed cert=\"alpn.test\" checked=2"),
        "both names handshaken through HAProxy before the CA was told"
    );
    // pebble validated alpn.test's names over TLS-ALPN-01 (it logs no HTTP attempt for them,
    // and its validations from 3 perspectives reached the daemon's responder through
    // HAProxy's TLS port, the only way to its tlsPort), plain.test's over HTTP-01.
    let log = env.pebble_log();
    assert!(
        log.contains("Attempting to validate w/ HTTP: http://plain.test:"),
        "{log}"
    );
    assert!(
        !log.contains("http://alpn.test:") && !log.contains("http://www.alpn.test:"),
        "{log}"
    );
    let presented = daemon.log_text();
    for name in ["alpn.test", "www.alpn.test"] {
        let n = presented
            .lines()
            .filter(|l| {
                l.contains("TLS-ALPN-01 challenge certificate presented")
                    && l.contains(&format!("name=\"{name}\""))
            })
            .count();
        assert!(
            n >= 1,
            "no challenge certificate presented for {name}:\n{presented}"
        );
    }
    let hap_log = || std::fs::read_to_string(env.dir.path().join("haproxy.log")).unwrap();
    let routed = hap_log()
        .lines()
        .filter(|l| l.contains(" fe_tls be_acme_tls/acme_tls "))
        .count();
    assert!(
        routed >= 6,
        "acme-tls/1 handshakes routed: {routed}\n{}",
        hap_log()
    );
    let dump = env.cli(domains, &["state", "dump"]);
    let dump = common::text(&dump);
    assert!(
        dump.contains("\"challenge\": \"tls-alpn-01\"")
            || dump.contains("\"challenge\":\"tls-alpn-01\""),
        "{dump}"
    );

    // Ordinary HTTPS on the same port: the issued certificate, the application's answer, and
    // the client's address and source port in the TLS frontend's log (PROXY v2 over the hop).
    let (port, leaf, answer) = https_get(&env, "www.alpn.test", &root);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("app"), "{answer}");
    let served = std::fs::read_to_string(env.certs_dir.join("alpn.test.pem")).unwrap();
    let stored_leaf = pem::parse_many(served).unwrap().remove(0).into_contents();
    assert_eq!(leaf, stored_leaf, "HAProxy serves the certificate issued");
    let client = format!("127.0.0.1:{port} ");
    // fe_tls logs its TCP session when it ends, after fe_https's request.
    wait_until(
        "the request logged by both frontends",
        Duration::from_secs(10),
        || {
            let log = hap_log();
            let mine = |l: &&str| l.starts_with(&client);
            log.lines()
                .filter(mine)
                .any(|l| l.contains(" fe_https~ be_app/app ") && l.contains(" 200 "))
                && log
                    .lines()
                    .filter(mine)
                    .any(|l| l.contains(" fe_tls be_tls_hop/fe_https "))
        },
    );

    // Validated: no challenge is published any more, so no acme-tls/1 handshake completes.
    assert!(!acme_tls_handshake(&env, "alpn.test"));
    assert!(!acme_tls_handshake(&env, "plain.test"));
    daemon.terminate();
}
