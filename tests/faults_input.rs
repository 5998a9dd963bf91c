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

/// The answer to the DNS query `q`: every A query is answered 127.0.0.1, anything else with no
/// record; the answer's name is a pointer to the question (compressed). `None` for a query too
/// short to hold a question.
fn compact_answer(q: &[u8]) -> Option<Vec<u8>> {
    let n = q.len();
    // Header (12 bytes), then the question: labels up to the root, type, class.
    let mut end = 12;
    while end < n && q[end] != 0 {
        end += 1 + q[end] as usize;
    }
    if end + 5 > n {
        return None;
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
    Some(r)
}

/// A DNS server on loopback for pebble, over UDP and TCP on one port, answering
/// `compact_answer`. Unlike challtestsrv it compresses the answer's name, so the answer for a
/// 253-character name is 287 bytes and fits pebble 2.4's 512-byte UDP read (pebble 2.10 asks
/// over TCP, where challtestsrv's answers would fit too).
fn start_compact_dns() -> u16 {
    let (socket, listener) = loop {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = socket.local_addr().unwrap().port();
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            break (socket, listener);
        }
    };
    let port = socket.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            if let Some(r) = compact_answer(&buf[..n]) {
                let _ = socket.send_to(&r, from);
            }
        }
    });
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                // Messages prefixed with their two-byte length (RFC 1035 §4.2.2).
                let mut len = [0u8; 2];
                while conn.read_exact(&mut len).is_ok() {
                    let mut q = vec![0u8; usize::from(u16::from_be_bytes(len))];
                    if conn.read_exact(&mut q).is_err() {
                        return;
                    }
                    let Some(r) = compact_answer(&q) else { return };
                    let mut out = (r.len() as u16).to_be_bytes().to_vec();
                    out.extend_from_slice(&r);
                    if conn.write_all(&out).is_err() {
                        return;
                    }
                }
            });
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

/// `run` opens an existing store while it reads the configuration (`daemon::EarlyStore`): a
/// configuration refused then still exits 2 naming the setting, and leaves the store as it was,
/// closed and whole.
#[test]
fn a_refused_configuration_leaves_an_existing_store_closed_and_whole() {
    use haproxy_acme::store::{sled::SledStore, Store};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let record = |id: &str| {
        haproxy_acme_state::Record::new(
            vec![id.to_string()],
            haproxy_acme_state::KeyType::EcdsaP256,
            1,
        )
    };
    {
        let store = SledStore::open(&data).unwrap();
        let records = (0..200).map(|i| record(&format!("r{i}.example.test")));
        rt.block_on((&store as &dyn Store).put_all(records.collect()))
            .unwrap();
    }
    for _ in 0..3 {
        let out = std::process::Command::new(BIN)
            .arg("run")
            .env_clear()
            .env("DOMAINS", "a.example.test")
            .env("DATA_DIR", &data)
            .env("CERTS_DIR", dir.path().join("certs"))
            .env("RESPONDER_LISTEN", "127.0.0.1:0")
            .env("KEY_TYPE", "ecdsa-p255")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("KEY_TYPE"), "{err}");
        // Closed at exit: opened here at once (a store still open would be locked).
        let store = SledStore::open(&data).unwrap_or_else(|e| panic!("after `run`: {e}"));
        let ids = rt.block_on((&store as &dyn Store).records()).unwrap();
        assert_eq!(ids.len(), 200, "every record kept");
    }
    assert!(
        !dir.path().join("certs").exists(),
        "nothing else is created before the configuration is valid"
    );
}

/// The daemon's resident memory in KiB (VmRSS).
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// What the flood's client saw of its connections still held at the end.
#[derive(Debug, Default)]
struct Held {
    closed: usize,
    busy_503: usize,
    open: usize,
}

/// Opens connections to `port` as fast as it can until `stop`: half send nothing, half send
/// half a request and stall. Each thread holds its newest `hold`; returns (opened, held state).
fn flood(
    port: u16,
    threads: usize,
    hold: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    opened: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> Vec<std::thread::JoinHandle<Held>> {
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering;
    (0..threads)
        .map(|t| {
            let (stop, opened) = (stop.clone(), opened.clone());
            std::thread::spawn(move || {
                let mut conns = std::collections::VecDeque::new();
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
                        continue;
                    };
                    if (i + t) % 2 == 1 {
                        let _ =
                            c.write_all(b"GET /.well-known/acme-challenge/x HTTP/1.1\r\nHost: a");
                    }
                    i += 1;
                    opened.fetch_add(1, Ordering::Relaxed);
                    conns.push_back(c);
                    if conns.len() > hold {
                        conns.pop_front();
                    }
                }
                let mut held = Held::default();
                let mut buf = [0u8; 64];
                for mut c in conns {
                    c.set_nonblocking(true).unwrap();
                    match c.read(&mut buf) {
                        Ok(n) if buf[..n].starts_with(b"HTTP/1.1 503") => held.busy_503 += 1,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => held.open += 1,
                        // An end, a reset, or an answer (timeout): the responder closed it.
                        _ => held.closed += 1,
                    }
                }
                held
            })
        })
        .collect()
}

#[test]
fn a_connection_flood_neither_starves_a_validation_nor_keeps_its_memory() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let env = Env::start();
    let root = env.issuer_root();
    let domains = "steady.example.test";
    let mut daemon = env.start_daemon(domains);
    let pid = daemon.pid();
    // A service's usual soft limit (systemd's default is 1024; the unit raises it): without the
    // cap, the flood would exhaust it and accept() would fail for the validation too.
    let limited = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), "--nofile=1024:1024"])
        .status()
        .expect("prlimit (util-linux)");
    assert!(limited.success());
    wait_until(
        "the first certificate served",
        Duration::from_secs(60),
        || {
            daemon.assert_running();
            env.served_and_valid(domains, &root).is_some()
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    let (idle_rss, idle_fds) = (rss_kib(pid), open_fds(pid));

    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicUsize::new(0));
    let flooders = flood(env.responder_port, 4, 2_000, stop.clone(), opened.clone());
    wait_until("the flood fills the cap", Duration::from_secs(30), || {
        opened.load(Ordering::Relaxed) >= 4 * haproxy_acme::responder::MAX_CONNECTIONS
    });
    // A real validation (pebble -> HAProxy -> the responder) while the flood goes on.
    let started = Instant::now();
    let added = env.cli(domains, &["domains", "add", "flood.example.test"]);
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let (mut peak_rss, mut peak_fds) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while env.served_and_valid("flood.example.test", &root).is_none() {
        daemon.assert_running();
        peak_rss = peak_rss.max(rss_kib(pid));
        peak_fds = peak_fds.max(open_fds(pid));
        assert!(
            Instant::now() < deadline,
            "no certificate for flood.example.test after 60 s of flood ({} connections)",
            opened.load(Ordering::Relaxed)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let validated_in = started.elapsed();
    // The flood goes on a little longer, then stops and lets go of its connections.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        peak_rss = peak_rss.max(rss_kib(pid));
        peak_fds = peak_fds.max(open_fds(pid));
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let held: Vec<Held> = flooders.into_iter().map(|h| h.join().unwrap()).collect();
    let total = opened.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(10));
    let (after_rss, after_fds) = (rss_kib(pid), open_fds(pid));
    eprintln!(
        "FAULTS-INPUT flood: {total} connections opened, at the end the client held {} \
         (closed by the responder {}, 503 {}, open {}); validation done {} ms after the order \
         was asked during the flood; daemon RSS idle {idle_rss} KiB, peak {peak_rss} KiB, \
         10 s after {after_rss} KiB; descriptors idle {idle_fds}, peak {peak_fds}, after \
         {after_fds}",
        held.iter()
            .map(|h| h.closed + h.busy_503 + h.open)
            .sum::<usize>(),
        held.iter().map(|h| h.closed).sum::<usize>(),
        held.iter().map(|h| h.busy_503).sum::<usize>(),
        held.iter().map(|h| h.open).sum::<usize>(),
        validated_in.as_millis(),
    );
    let cap = haproxy_acme::responder::MAX_CONNECTIONS;
    assert!(total >= 4 * cap, "the flood opened {total}");
    // The client counts as open what waits in the listen backlog too; the daemon's own
    // descriptors are the measure: the cap, HAProxy's connection and the admin socket.
    assert!(
        peak_fds <= idle_fds + cap + 8,
        "descriptors: idle {idle_fds}, peak {peak_fds}"
    );
    assert!(
        after_fds <= idle_fds + 2,
        "descriptors: idle {idle_fds}, after {after_fds}"
    );
    // Bounded by the cap: per connection a task, a socket and at most 16 KiB of hyper's
    // buffers (measured: ~20 KiB each, +10 MiB at 512); given back once the flood is over.
    assert!(
        peak_rss <= idle_rss + (cap as u64) * 48,
        "RSS idle {idle_rss} KiB, peak {peak_rss} KiB"
    );
    assert!(
        after_rss <= idle_rss + 4 * 1024,
        "RSS idle {idle_rss} KiB, 10 s after the flood {after_rss} KiB"
    );
    daemon.assert_running();
}
