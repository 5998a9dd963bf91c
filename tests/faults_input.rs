//! Hostile input, for real: names as long as DNS allows issued by pebble and served by HAProxy,
//! settings that must be refused at start (exit 2, the setting named), and a connection flood on
//! the HTTP-01 responder while a real validation goes through.

mod common;

use std::time::{Duration, Instant};

use common::{wait_until, Env, BIN};

/// A valid name of exactly 253 characters (labels of at most 63) ending in `tail`.
fn long_name(tail: &str) -> String {
    let label = |c: char| std::iter::repeat_n(c, 63).collect::<String>();
    let full = format!(
        "{}.{}.{}.{}.{tail}",
        label('a'),
        label('b'),
        label('c'),
        label('d')
    );
    full[full.len() - 253..].to_string()
}

/// The files in the certificate directory, sorted.
fn cert_files(env: &Env) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(&env.certs_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A DNS server on loopback for pebble: every A query is answered 127.0.0.1, anything else with
/// no record. Unlike challtestsrv it compresses the answer's name (a pointer to the question), so
/// the answer for a 253-character name is 287 bytes and fits pebble's 512-byte UDP read.
fn start_compact_dns() -> u16 {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = socket.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let q = &buf[..n];
            // Header (12 bytes), then the question: labels up to the root, type, class.
            let mut end = 12;
            while end < n && q[end] != 0 {
                end += 1 + q[end] as usize;
            }
            if end + 5 > n {
                continue;
            }
            let qtype = u16::from_be_bytes([q[end + 1], q[end + 2]]);
            let a = qtype == 1;
            let mut r = Vec::with_capacity(end + 5 + 16);
            r.extend_from_slice(&q[..2]); // id
            r.extend_from_slice(&[0x84 | (q[2] & 0x01), 0x00]); // response, authoritative, RD
            r.extend_from_slice(&[0, 1, 0, u8::from(a), 0, 0, 0, 0]);
            r.extend_from_slice(&q[12..end + 5]);
            if a {
                // The name as a pointer to the question, A, IN, TTL 0, 4 bytes: 127.0.0.1.
                r.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4, 127, 0, 0, 1]);
            }
            let _ = socket.send_to(&r, from);
        }
    });
    port
}

#[test]
fn names_of_253_characters_are_issued_written_and_served_across_restarts() {
    let mut env = Env::start_opts(common::Options {
        dns_port: Some(start_compact_dns()),
        ..Default::default()
    });
    let root = env.issuer_root();
    // Two names that share their first 200 characters (what a shortened file name keeps).
    let (a, b) = (long_name("x.test"), long_name("y.test"));
    assert_eq!((a.len(), b.len()), (253, 253));
    assert_eq!(a[..200], b[..200]);
    let domains = format!("{a};{b},www.short.test");
    let started = Instant::now();
    let mut daemon = env.start_daemon(&domains);
    let deadline = Instant::now() + Duration::from_secs(60);
    while ![&a, &b, &"www.short.test".to_string()]
        .iter()
        .all(|n| env.served_and_valid(n, &root).is_some())
    {
        daemon.assert_running();
        assert!(
            Instant::now() < deadline,
            "the 253-character names are not served after 60 s; the daemon's log:\n{}\npebble's:\n{}",
            daemon.log_text(),
            env.pebble_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "FAULTS-INPUT: two 253-character certificates served {} ms after start",
        started.elapsed().as_millis()
    );
    assert_eq!(env.pebble_new_orders(), 2);

    // Each is its own file, named by the documented rule, and HAProxy knows it by that name.
    let files = cert_files(&env);
    let (fa, fb) = (
        haproxy_acme::config::cert_file_name(&a),
        haproxy_acme::config::cert_file_name(&b),
    );
    assert_ne!(fa, fb);
    assert_eq!(
        files,
        {
            let mut want = vec!["000-default.pem".to_string(), fa.clone(), fb.clone()];
            want.sort();
            want
        },
        "no temporary file left, one file per certificate"
    );
    for f in [&fa, &fb] {
        assert!(f.len() < 255 - 9, "{f}");
        let shown = env.runtime(&format!(
            "show ssl cert {}",
            env.certs_dir.join(f).display()
        ));
        assert!(shown.contains("Status: Used"), "{shown}");
    }
    let served_a = env.served_and_valid(&a, &root).unwrap();
    let served_b = env.served_and_valid(&b, &root).unwrap();
    assert_ne!(
        serial_of(&served_a),
        serial_of(&served_b),
        "each name gets its own certificate"
    );

    // The same file names after a restart of the daemon (nothing re-ordered, no new file), and
    // HAProxy restarted from the directory maps each file to its names.
    assert!(daemon.terminate().success());
    let mut daemon = env.start_daemon(&domains);
    wait_until("healthy again", Duration::from_secs(30), || {
        daemon.assert_running();
        env.cli(&domains, &["healthcheck"]).status.success()
    });
    env.kill_haproxy();
    env.start_haproxy();
    for n in [&a, &b] {
        wait_until(
            "served after HAProxy's restart",
            Duration::from_secs(30),
            || env.served_and_valid(n, &root).is_some(),
        );
    }
    assert_eq!(
        serial_of(&env.served_and_valid(&a, &root).unwrap()),
        serial_of(&served_a)
    );
    assert_eq!(cert_files(&env), files);
    assert_eq!(env.pebble_new_orders(), 2, "nothing ordered again");
    assert_eq!(env.issued().len(), 2);
    daemon.assert_running();
}

/// The leaf's serial from `openssl s_client` output (its PEM, parsed).
fn serial_of(s_client: &str) -> String {
    let start = s_client.find("-----BEGIN CERTIFICATE-----").unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&s_client.as_bytes()[start..]).unwrap();
    pem.parse_x509().unwrap().raw_serial_as_string()
}

/// A setting's value that must stop the daemon before it starts: exit 2, the setting named on
/// stderr, no panic. Run as `check-config` and as `run`.
#[test]
fn settings_that_must_be_refused_at_start_exit_2_naming_them() {
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let key_only = dir.path().join("key.pem");
    std::fs::write(
        &key_only,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let path = |p: &std::path::Path| OsString::from(p);
    let cases: Vec<(&str, OsString, &str)> = vec![
        ("RATE_LIMITS", "orders=5/0s".into(), "from 1s to 366d"),
        ("RATE_LIMITS", "orders=5/-1h".into(), "not a duration"),
        (
            "RATE_LIMITS",
            "orders=5/99999999999999999999".into(),
            "too large",
        ),
        ("RATE_LIMITS", "orders=5/400d".into(), "from 1s to 366d"),
        ("RATE_LIMITS", "orders=0/1h".into(), "a limit of 0"),
        ("RATE_LIMITS", "orders=5/1時間".into(), "not a duration"),
        ("DEPLOY_HOOK_TIMEOUT", "5分".into(), "not a duration"),
        ("DEPLOY_HOOK_TIMEOUT", "５s".into(), "not a duration"),
        ("ACME_CA_BUNDLE", path(&empty), "holds no certificate"),
        ("ACME_CA_BUNDLE", path(&key_only), "holds no certificate"),
        (
            "ACME_DIRECTORY",
            "https://ca .test/dir".into(),
            "contains ' '",
        ),
        ("CERTS_DIR", "/etc/haproxy/my certs".into(), "runtime API"),
        ("PRUNE", "flase".into(), "PRUNE"),
        (
            "EMAIL",
            OsString::from_vec(b"me\xff@a.test".to_vec()),
            "not UTF-8: EMAIL",
        ),
        ("KEY_TYPE", "ecdsa-p255".into(), "expected one of"),
    ];
    for (setting, value, why) in &cases {
        for command in ["check-config", "run"] {
            let out = std::process::Command::new(BIN)
                .arg(command)
                .env_clear()
                .env("DOMAINS", "a.example.test")
                .env("DATA_DIR", dir.path().join("data"))
                .env("CERTS_DIR", dir.path().join("certs"))
                .env("HAPROXY_RUNTIME_API", "unix:/run/haproxy/admin.sock")
                .env("RESPONDER_LISTEN", "127.0.0.1:0")
                .env(setting, value)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(2),
                "{setting}={value:?} {command}: {err}"
            );
            assert!(
                err.contains(setting) && err.contains(why) && !err.contains("panicked"),
                "{setting}={value:?} {command}: {err}"
            );
        }
    }
    assert!(
        !dir.path().join("data").exists(),
        "nothing is created before the configuration is valid"
    );
}
