//! Benchmarks: haproxy-acme against uacme, certbot and lego on the same pebble and HAProxy, in the
//! same run, alternating. Run with `bash scripts/bench.sh` (installs what it needs); it writes the
//! results table into BENCHMARKS.md. Figures are medians of several runs on a noisy machine: read
//! the ratios, not the digits.
//!
//! Settings (environment): BENCH_RUNS (runs per client for scenario 1, default 5),
//! BENCH_RUNS_MANY (scenario 2, default 3), BENCH_MANY (names in scenario 2, default 100),
//! BENCH_SLOW_PEERS_MANY (names certbot and lego get in scenario 2, default 10: at 3-6 s per name
//! they would take 5-10 minutes per run), BENCH_INSTALLS (scenario 4, default 10000), BENCH_IDLE_SECS (scenario 5, default 60),
//! BENCH_SCENARIOS (e.g. "1,2", default all), BENCH_OUT (default BENCHMARKS.md). Scenario 3 (the
//! daemon at 100,000 certificates) moved to `cargo bench --bench scale`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{cpu_ticks, median, proc_status, wait_until, Daemon, Env};
use haproxy_acme::config::RuntimeApiAddr;
use haproxy_acme::installer::{Haproxy, Installer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One result row: scenario, client, and the samples (seconds, or another unit).
struct Row {
    scenario: String,
    client: String,
    unit: &'static str,
    samples: Vec<f64>,
    note: String,
}

/// A TLS handshake with HAProxy for `name` that verifies against pebble's root: true when
/// HAProxy serves a valid certificate for `name` (the default certificate never verifies).
struct Prober {
    config: Arc<rustls::ClientConfig>,
    port: u16,
}

impl Prober {
    fn new(env: &Env) -> Prober {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(env.issuer_root()).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        Prober {
            config: Arc::new(config),
            port: env.https_port,
        }
    }

    fn served(&self, name: &str) -> bool {
        let Ok(mut sock) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = sock.set_read_timeout(Some(Duration::from_secs(2)));
        let server = ServerName::try_from(name.to_string()).unwrap();
        let mut conn = rustls::ClientConnection::new(self.config.clone(), server).unwrap();
        while conn.is_handshaking() {
            if conn.complete_io(&mut sock).is_err() {
                return false;
            }
        }
        true
    }

    /// Waits until every name is served; returns the time from `t0`.
    fn wait_all(&self, names: &[String], t0: Instant, timeout: Duration) -> f64 {
        let mut left: Vec<&String> = names.iter().collect();
        while !left.is_empty() {
            assert!(
                t0.elapsed() < timeout,
                "{} names not served after {timeout:?}, e.g. {}",
                left.len(),
                left[0]
            );
            left.retain(|n| !self.served(n));
            if !left.is_empty() {
                std::thread::sleep(Duration::from_millis(3));
            }
        }
        t0.elapsed().as_secs_f64()
    }
}

fn rss_kib(pid: u32) -> u64 {
    proc_status(pid, "VmRSS:")
}

/// Waits for `child`; returns whether it succeeded and its peak RSS (KiB, with the descendants
/// it waited for), from wait4(2).
fn wait_with_rss(child: &Child) -> (bool, u64) {
    let mut status = 0;
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: wait4 on our own child's pid, writing into the status and rusage we hand it.
    let rc = unsafe { libc::wait4(child.id() as i32, &mut status, 0, ru.as_mut_ptr()) };
    assert!(rc > 0, "wait4 failed");
    // SAFETY: wait4 succeeded, so it filled the struct.
    let ru = unsafe { ru.assume_init() };
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    (ok, ru.ru_maxrss as u64)
}

struct Bench {
    env: Env,
    prober: Prober,
    rt: tokio::runtime::Runtime,
    installer: Installer,
    rows: Vec<Row>,
    work: PathBuf,
    /// The webroot server uacme needs (HAProxy forwards challenges to the responder port).
    webroot: PathBuf,
}

impl Bench {
    fn daemon_ready(&self, d: &mut Daemon) {
        wait_until("daemon ready", Duration::from_secs(120), || {
            d.assert_running();
            d.log_text().contains("reconciler ready")
        });
    }

    fn domains_file(&self) -> PathBuf {
        self.work.join("domains.txt")
    }

    /// Writes DOMAINS_FILE atomically (rename over), as an editor or a ConfigMap would.
    fn write_domains(&self, lines: &[String]) {
        let tmp = self.work.join(".domains.tmp");
        std::fs::write(&tmp, lines.join("\n") + "\n").unwrap();
        std::fs::rename(&tmp, self.domains_file()).unwrap();
    }

    fn start_us(&self, base: &str) -> Daemon {
        self.write_domains(&[base.to_string()]);
        let file = self.domains_file().display().to_string();
        let level = std::env::var("BENCH_DAEMON_LOG").unwrap_or_else(|_| "info".into());
        let mut d = self
            .env
            .start_daemon_with("", &[("DOMAINS_FILE", &file), ("RUST_LOG", &level)]);
        self.daemon_ready(&mut d);
        let t0 = Instant::now();
        self.prober
            .wait_all(&[base.to_string()], t0, Duration::from_secs(60));
        d
    }

    /// Installs a peer's certificate through the runtime API with our installer (same path as
    /// ours), then the caller waits until it is served.
    fn install(&self, id: &str, fullchain: &Path, key: &Path) {
        let chain = std::fs::read_to_string(fullchain).unwrap();
        let key = std::fs::read_to_string(key).unwrap();
        let meta = haproxy_acme::pki::chain_meta(&chain, 0).unwrap();
        self.rt
            .block_on(self.installer.install(id, &chain, &key, &meta))
            .unwrap();
    }

    fn certbot(&self, name: &str) -> Command {
        let base = self.work.join("certbot");
        let mut c = Command::new("certbot");
        c.args([
            "certonly",
            "--non-interactive",
            "--agree-tos",
            "--register-unsafely-without-email",
            "--standalone",
            "--http-01-address",
            "127.0.0.1",
            "--http-01-port",
            &self.env.responder_port.to_string(),
            "--server",
            &self.env.directory_url(),
            "--config-dir",
            &base.join("config").display().to_string(),
            "--work-dir",
            &base.join("work").display().to_string(),
            "--logs-dir",
            &base.join("logs").display().to_string(),
            "-d",
            name,
        ])
        .env("REQUESTS_CA_BUNDLE", &self.env.listener_ca);
        c
    }

    fn lego(&self, name: &str) -> Command {
        let mut c = Command::new("lego");
        c.args([
            "--accept-tos",
            "--email",
            "bench@example.test",
            "--server",
            &self.env.directory_url(),
            "--path",
            &self.work.join("lego").display().to_string(),
            "--http",
            "--http.port",
            &format!("127.0.0.1:{}", self.env.responder_port),
            "--domains",
            name,
            "run",
        ])
        .env("LEGO_CA_CERTIFICATES", &self.env.listener_ca);
        c
    }

    /// uacme trusts only the system bundle: run it in a private mount namespace where the bundle
    /// also holds pebble's listener CA.
    fn uacme(&self, args: &str) -> Command {
        let bundle = self.work.join("bundle.pem");
        if !bundle.exists() {
            let mut b = std::fs::read("/etc/ssl/certs/ca-certificates.crt").unwrap_or_default();
            b.extend(std::fs::read(&self.env.listener_ca).unwrap());
            std::fs::write(&bundle, b).unwrap();
        }
        let mut c = Command::new("unshare");
        c.args(["-m", "sh", "-c"]).arg(format!(
            "mount --bind {bundle} /etc/ssl/certs/ca-certificates.crt && exec uacme -y -a {dir} -c {conf} {args}",
            bundle = bundle.display(),
            dir = self.env.directory_url(),
            conf = self.work.join("uacme").display(),
        ))
        .env(
            "UACME_CHALLENGE_PATH",
            self.webroot.join(".well-known/acme-challenge"),
        );
        c
    }

    /// Runs a peer to completion; returns its peak RSS in KiB.
    #[allow(clippy::zombie_processes)] // reaped by wait4 in `wait_with_rss`
    fn run_ok(&self, mut c: Command, what: &str) -> u64 {
        let log = self.work.join(format!("{}.log", what.replace(' ', "-")));
        let f = std::fs::File::create(&log).unwrap();
        let child = c
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let (ok, rss) = wait_with_rss(&child);
        assert!(
            ok,
            "{what} failed: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        rss
    }

    /// One certificate for `name` by `peer`, to a file, then installed. Returns the peer's peak
    /// RSS (KiB).
    fn peer_one(&self, peer: &str, name: &str) -> u64 {
        let rss;
        match peer {
            "certbot" => {
                rss = self.run_ok(self.certbot(name), "certbot");
                let live = self.work.join("certbot/config/live").join(name);
                self.install(name, &live.join("fullchain.pem"), &live.join("privkey.pem"));
            }
            "lego" => {
                rss = self.run_ok(self.lego(name), "lego");
                let d = self.work.join("lego/certificates");
                self.install(
                    name,
                    &d.join(format!("{name}.crt")),
                    &d.join(format!("{name}.key")),
                );
            }
            "uacme" => {
                rss = self.run_ok(
                    self.uacme(&format!("-h /usr/share/uacme/uacme.sh -t EC issue {name}")),
                    "uacme",
                );
                let conf = self.work.join("uacme");
                self.install(
                    name,
                    &conf.join(name).join("cert.pem"),
                    &conf.join("private").join(name).join("key.pem"),
                );
            }
            _ => unreachable!(),
        }
        rss
    }

    /// Serves the webroot on the responder port (uacme's challenges), as the testenv does.
    fn webroot_server(&self) -> Child {
        std::fs::create_dir_all(self.webroot.join(".well-known/acme-challenge")).unwrap();
        let child = Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1"])
            .arg(self.env.responder_port.to_string())
            .arg("--directory")
            .arg(&self.webroot)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m http.server");
        wait_until("webroot server", Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", self.env.responder_port)).is_ok()
        });
        child
    }

    /// Registers the peers' accounts beforehand (not timed), as in the baseline.
    fn register_peers(&self, peers: &[&str]) {
        for p in peers {
            match *p {
                "uacme" => drop(self.run_ok(self.uacme("new"), "uacme new")),
                "certbot" => {
                    let base = self.work.join("certbot");
                    let mut r = Command::new("certbot");
                    r.args([
                        "register",
                        "--non-interactive",
                        "--agree-tos",
                        "--register-unsafely-without-email",
                        "--server",
                        &self.env.directory_url(),
                        "--config-dir",
                        &base.join("config").display().to_string(),
                        "--work-dir",
                        &base.join("work").display().to_string(),
                        "--logs-dir",
                        &base.join("logs").display().to_string(),
                    ])
                    .env("REQUESTS_CA_BUNDLE", &self.env.listener_ca);
                    self.run_ok(r, "certbot register");
                }
                // lego registers on its first `run`; do one, untimed.
                "lego" => drop(self.run_ok(self.lego("lego-warmup.example.test"), "lego warm-up")),
                _ => {}
            }
        }
    }

    fn push(&mut self, scenario: &str, client: &str, unit: &'static str, v: f64, note: &str) {
        eprintln!("BENCH {scenario} {client}: {v:.3} {unit} {note}");
        if let Some(r) = self
            .rows
            .iter_mut()
            .find(|r| r.scenario == scenario && r.client == client)
        {
            r.samples.push(v);
            return;
        }
        self.rows.push(Row {
            scenario: scenario.into(),
            client: client.into(),
            unit,
            samples: vec![v],
            note: note.into(),
        });
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not, and must not start a
    // 25-minute run that rewrites BENCHMARKS.md.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("benches/compare.rs is a benchmark: run `bash scripts/bench.sh`");
        return;
    }
    let scenarios: Vec<String> = std::env::var("BENCH_SCENARIOS")
        .unwrap_or_else(|_| "1,2,3,4,5,6".into())
        .split(',')
        .map(|s| s.trim().to_string())
        .collect();
    let on = |s: &str| scenarios.iter().any(|x| x == s);
    let runs = setting("BENCH_RUNS", 5);
    let started = Instant::now();
    let env = Env::start();
    let work = env.dir.path().join("bench");
    std::fs::create_dir_all(&work).unwrap();
    let installer = Installer::new(
        env.certs_dir.clone(),
        env.certs_dir.clone(),
        Some(RuntimeApiAddr::Unix(env.runtime_sock.clone())),
    );
    let mut b = Bench {
        prober: Prober::new(&env),
        rt: tokio::runtime::Runtime::new().unwrap(),
        installer,
        rows: Vec::new(),
        webroot: work.join("webroot"),
        work,
        env,
    };
    let peers = ["uacme", "certbot", "lego"];
    let mut seq = 0usize;
    let mut fresh = |prefix: &str| {
        seq += 1;
        format!("{prefix}{seq}.example.test")
    };

    if on("1") || on("2") {
        // Accounts exist before anything is timed (ours: the daemon's first start).
        let mut d = b.start_us(&fresh("base"));
        d.terminate();
        let web = b.webroot_server();
        b.register_peers(&["uacme"]);
        drop_child(web);
        b.register_peers(&["certbot", "lego"]);
    }

    if on("1") {
        for run in 0..runs {
            // Ours: the daemon runs; `domains add` through its admin socket; stop the clock when
            // HAProxy serves the new certificate.
            let mut d = b.start_us(&fresh("base"));
            let name = fresh("one");
            let t0 = Instant::now();
            let out = b.env.cli("", &["domains", "add", &name]);
            assert!(out.status.success(), "{out:?}");
            let t = b
                .prober
                .wait_all(std::slice::from_ref(&name), t0, Duration::from_secs(60));
            b.push(
                "1 one new domain, time to served",
                "haproxy-acme",
                "s",
                t,
                "",
            );
            if std::env::var_os("BENCH_DAEMON_LOG").is_some() {
                // Where the time went, for profiling: the daemon's lines from the command on.
                let log = d.log_text();
                let from = log.rfind("configuration reloaded").unwrap_or(0);
                eprintln!("BENCH daemon log for {name}:\n{}", &log[from..]);
            }
            d.terminate();
            for peer in peers {
                let web = (peer == "uacme").then(|| b.webroot_server());
                let name = fresh(&format!("one-{peer}-"));
                let t0 = Instant::now();
                let rss = b.peer_one(peer, &name);
                let t = b.prober.wait_all(&[name], t0, Duration::from_secs(60));
                b.push(
                    "1 one new domain, time to served",
                    peer,
                    "s",
                    t,
                    "to a file, then the same runtime-API install",
                );
                b.push(
                    "5 footprint: peers' peak RSS for one issuance",
                    peer,
                    "MiB",
                    rss as f64 / 1024.0,
                    "a one-shot process (not idle)",
                );
                if let Some(w) = web {
                    drop_child(w);
                }
            }
            eprintln!("BENCH scenario 1 run {} of {runs} done", run + 1);
        }
    }

    if on("2") {
        let many = setting("BENCH_MANY", 100);
        let slow = setting("BENCH_SLOW_PEERS_MANY", 10);
        for run in 0..setting("BENCH_RUNS_MANY", 3) {
            let base = fresh("base");
            let mut d = b.start_us(&base);
            let names: Vec<String> = (0..many).map(|_| fresh("many")).collect();
            let mut lines = vec![base.clone()];
            lines.extend(names.iter().cloned());
            let t0 = Instant::now();
            b.write_domains(&lines);
            let t = b.prober.wait_all(&names, t0, Duration::from_secs(600));
            b.push(
                &format!("2 {many} new domains, time to all served"),
                "haproxy-acme",
                "s",
                t,
                "one DOMAINS_FILE edit",
            );
            if run == 0 && on("5") {
                // Scenario 5 on the daemon that now holds >100 certificates.
                let idle = setting("BENCH_IDLE_SECS", 60);
                let pid = d.pid();
                std::thread::sleep(Duration::from_secs(2));
                let c0 = cpu_ticks(pid);
                std::thread::sleep(Duration::from_secs(idle as u64));
                let c1 = cpu_ticks(pid);
                let row = format!("5 footprint, {} certificates, idle {idle} s", lines.len());
                b.push(
                    &row,
                    "haproxy-acme",
                    "MiB RSS",
                    rss_kib(pid) as f64 / 1024.0,
                    "the daemon of scenario 2 after its run",
                );
                b.push(
                    &row,
                    "haproxy-acme CPU",
                    "ms/min",
                    (c1 - c0) as f64 * 10.0 * 60.0 / idle as f64,
                    "",
                );
            }
            d.terminate();
            // uacme, one after another, and 8 at a time.
            let web = b.webroot_server();
            let names: Vec<String> = (0..many).map(|_| fresh("many-uacme-")).collect();
            let t0 = Instant::now();
            for n in &names {
                b.peer_one("uacme", n);
            }
            let t = b.prober.wait_all(&names, t0, Duration::from_secs(900));
            b.push(
                &format!("2 {many} new domains, time to all served"),
                "uacme sequential",
                "s",
                t,
                "",
            );
            let names: Vec<String> = (0..many).map(|_| fresh("many-uacme8-")).collect();
            let t0 = Instant::now();
            std::thread::scope(|s| {
                for chunk in names.chunks(many.div_ceil(8)) {
                    let b = &b;
                    s.spawn(move || {
                        for n in chunk {
                            b.peer_one("uacme", n);
                        }
                    });
                }
            });
            let t = b.prober.wait_all(&names, t0, Duration::from_secs(900));
            b.push(
                &format!("2 {many} new domains, time to all served"),
                "uacme 8 parallel",
                "s",
                t,
                "",
            );
            drop_child(web);
            if run == 0 {
                for peer in ["certbot", "lego"] {
                    let names: Vec<String> =
                        (0..slow).map(|_| fresh(&format!("many-{peer}-"))).collect();
                    let t0 = Instant::now();
                    for n in &names {
                        b.peer_one(peer, n);
                    }
                    let t = b.prober.wait_all(&names, t0, Duration::from_secs(900));
                    b.push(
                        &format!("2 {many} new domains, time to all served"),
                        &format!("{peer} sequential"),
                        "s",
                        t * many as f64 / slow as f64,
                        &format!(
                            "measured for {slow} names ({t:.1} s), scaled ×{} (per-name time is flat)",
                            many / slow
                        ),
                    );
                }
            }
        }
    }

    if on("4") {
        installs(&mut b, setting("BENCH_INSTALLS", 10_000));
    }
    if on("6") {
        responder(&mut b);
    }
    write_table(&b.rows, started.elapsed());
}

fn drop_child(mut c: Child) {
    let _ = c.kill();
    let _ = c.wait();
}

/// Scenario 4: `n` certificates pushed into one HAProxy through the runtime API, then the same
/// files loaded by a full reload.
fn installs(b: &mut Bench, n: usize) {
    let env = &b.env;
    let worker_rss = |env: &Env| -> u64 {
        let out = env.master("show proc");
        out.lines()
            .filter(|l| l.split_whitespace().nth(1) == Some("worker"))
            .filter_map(|l| l.split_whitespace().next()?.parse::<u32>().ok())
            .map(rss_kib)
            .max()
            .unwrap_or(0)
    };
    let before = worker_rss(env);
    let reloads0 = env.haproxy_reloads();
    // ECDSA leaf certificates signed by one local CA (what is measured is HAProxy's side).
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let issuer = rcgen::CertifiedIssuer::self_signed(ca, ca_key).unwrap();
    let mut per = Vec::with_capacity(n);
    let t_all = Instant::now();
    for i in 0..n {
        let name = format!("inst{i}.example.test");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.clone()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let chain = format!("{}{}", cert.pem(), issuer.pem());
        let meta = haproxy_acme::pki::chain_meta(&chain, 0).unwrap();
        let t0 = Instant::now();
        b.rt.block_on(
            b.installer
                .install(&name, &chain, &key.serialize_pem(), &meta),
        )
        .unwrap();
        per.push(t0.elapsed().as_secs_f64() * 1000.0);
        if i % 1000 == 999 {
            eprintln!(
                "BENCH installs: {} done, last 1000 median {:.2} ms",
                i + 1,
                median(&per[i - 999..])
            );
        }
    }
    let total = t_all.elapsed().as_secs_f64();
    let after = worker_rss(&b.env);
    let reloads = b.env.haproxy_reloads() - reloads0;
    let first: Vec<f64> = per.iter().take(100).copied().collect();
    let last: Vec<f64> = per.iter().rev().take(100).copied().collect();
    for (label, v) in [
        ("per install, first 100", median(&first)),
        ("per install, last 100", median(&last)),
        ("per install, all", median(&per)),
    ] {
        b.push(
            &format!("4 {n} runtime-API installs: {label}"),
            "haproxy-acme",
            "ms",
            v,
            "",
        );
    }
    b.push(
        &format!("4 {n} runtime-API installs: total"),
        "haproxy-acme",
        "s",
        total,
        &format!(
            "HAProxy reloads during installs: {reloads}; worker RSS {} → {} MiB",
            before / 1024,
            after / 1024
        ),
    );
    // The same files, loaded by a reload: from the command until the new worker runs.
    let t0 = Instant::now();
    let _ = b.env.master("reload");
    wait_until("HAProxy reloaded", Duration::from_secs(600), || {
        // The master CLI does not answer while the master re-executes itself.
        let out = b.env.master("show proc");
        let field = |l: &str, i| l.split_whitespace().nth(i).map(str::to_string);
        let reloads = out
            .lines()
            .find(|l| field(l, 1).as_deref() == Some("master"))
            .and_then(|l| field(l, 2)?.parse::<u32>().ok());
        let workers = out
            .lines()
            .filter(|l| field(l, 1).as_deref() == Some("worker"))
            .count();
        reloads.is_some_and(|r| r > reloads0) && workers == 1
    });
    let reload = t0.elapsed().as_secs_f64();
    let rss = worker_rss(&b.env);
    b.push(
        &format!("4 {n} certificates loaded by a full reload"),
        "HAProxy reload",
        "s",
        reload,
        &format!("new worker RSS {} MiB", rss / 1024),
    );
}

/// Scenario 6: the HTTP-01 responder with wrk: directly, through HAProxy, and HAProxy answering by
/// itself (its HTTPS redirect for a non-challenge path) as the ceiling.
fn responder(b: &mut Bench) {
    let tokens = haproxy_acme::responder::Tokens::default();
    let token = "bench-token_0123456789abcdefghijklmnopqrstuvwxyz";
    tokens.insert(token.into(), format!("{token}.thumbprint"));
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", b.env.responder_port)
        .parse()
        .unwrap();
    let listener = b.rt.block_on(haproxy_acme::responder::bind(addr)).unwrap();
    b.rt.spawn(haproxy_acme::responder::serve(listener, tokens, rx));
    let path = format!("/.well-known/acme-challenge/{token}");
    let targets = [
        (
            "responder, direct",
            format!("http://127.0.0.1:{}{path}", b.env.responder_port),
        ),
        (
            "responder, through HAProxy",
            format!("http://127.0.0.1:{}{path}", b.env.http_port),
        ),
        (
            "HAProxy answering itself (ceiling)",
            format!("http://127.0.0.1:{}/", b.env.http_port),
        ),
    ];
    for _ in 0..3 {
        for (label, url) in &targets {
            let out = Command::new("wrk")
                .args(["-t2", "-c64", "-d8s", "--latency", url])
                .output()
                .expect("wrk");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let rps: f64 = text
                .lines()
                .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(f64::NAN);
            let p99 = text
                .lines()
                .find_map(|l| l.trim().strip_prefix("99%"))
                .map(|v| parse_latency_ms(v.trim()))
                .unwrap_or(f64::NAN);
            let non2xx = text
                .lines()
                .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
                .map(str::trim)
                .unwrap_or("0")
                .to_string();
            b.push(
                &format!("6 {label}: requests/s"),
                "wrk -t2 -c64",
                "req/s",
                rps,
                &format!("non-2xx/3xx: {non2xx}"),
            );
            b.push(&format!("6 {label}: p99"), "wrk -t2 -c64", "ms", p99, "");
        }
    }
}

fn parse_latency_ms(v: &str) -> f64 {
    let (num, unit) = v.split_at(v.find(|c: char| c.is_alphabetic()).unwrap_or(v.len()));
    let n: f64 = num.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        _ => f64::NAN,
    }
}

/// Writes the table between the markers of BENCHMARKS.md (the rest of the file is prose).
fn write_table(rows: &[Row], took: Duration) {
    let mut by_scenario: BTreeMap<&str, Vec<&Row>> = BTreeMap::new();
    for r in rows {
        by_scenario.entry(&r.scenario).or_default().push(r);
    }
    let mut t = String::new();
    let date = Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    t.push_str(&format!(
        "Run {date} on {} cores ({cpu}), {:.0} s in all. Medians (min–max) of the runs; \
         \"ratio\" = the peer's median / ours (>1: we are faster).\n\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        took.as_secs_f64()
    ));
    t.push_str("| scenario | client | median | min | max | runs | ratio | note |\n");
    t.push_str("|---|---|---|---|---|---|---|---|\n");
    for (scenario, rs) in &by_scenario {
        let ours = rs
            .iter()
            .find(|r| r.client == "haproxy-acme")
            .map(|r| median(&r.samples));
        for r in rs {
            let m = median(&r.samples);
            let min = r.samples.iter().cloned().fold(f64::INFINITY, f64::min);
            let max = r.samples.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let ratio = match ours {
                Some(o) if r.client != "haproxy-acme" && r.unit == "s" => format!("{:.1}×", m / o),
                _ => String::new(),
            };
            let fmt = |v: f64| {
                if v >= 100.0 {
                    format!("{v:.0}")
                } else if v >= 10.0 {
                    format!("{v:.1}")
                } else {
                    format!("{v:.3}")
                }
            };
            t.push_str(&format!(
                "| {scenario} | {} | {} {} | {} | {} | {} | {ratio} | {} |\n",
                r.client,
                fmt(m),
                r.unit,
                fmt(min),
                fmt(max),
                r.samples.len(),
                r.note
            ));
        }
    }
    let path = std::env::var("BENCH_OUT").unwrap_or_else(|_| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("BENCHMARKS.md")
            .display()
            .to_string()
    });
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let (begin, end) = ("<!-- bench:begin -->", "<!-- bench:end -->");
    let new = match (old.find(begin), old.find(end)) {
        (Some(a), Some(z)) if a < z => format!("{}{begin}\n{t}{}", &old[..a], &old[z..]),
        _ => format!("{old}\n{begin}\n{t}{end}\n"),
    };
    std::fs::write(&path, new).unwrap();
    let _ = std::io::stdout().write_all(t.as_bytes());
    eprintln!("BENCH: table written to {path}");
}
