//! End-to-end harness: starts a real pebble (with pebble-challtestsrv as its DNS), a real HAProxy
//! from `deploy/haproxy.cfg` (master-worker, runtime API) and the haproxy-acme daemon, on free
//! loopback ports in a temporary directory, and stops them all on drop. Missing programs make
//! the test fail with the command that installs them; nothing is skipped.

#![allow(dead_code)]

pub mod bind;
pub mod ca_proxy;
pub mod fleet;
pub mod pg;
pub mod tmpfs;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

pub const BIN: &str = env!("CARGO_BIN_EXE_haproxy-acme");
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The HAProxy the tests run: `HAPROXY_BIN` (a path, e.g. a `scripts/lab.sh` wrapper such as
/// `/var/cache/haproxy-acme-lab/bin/haproxy-3.2`, or a name on `PATH`), else `haproxy`.
pub fn haproxy_bin() -> String {
    program("HAPROXY_BIN", "haproxy")
}

/// The pebble the tests run: `PEBBLE_BIN` (a path or a name on `PATH`; `pebble` is Debian
/// bookworm's 2.4), else pebble 2.10 as `scripts/install-deps.sh` (through `scripts/lab.sh`)
/// installs it: `${LAB_DIR:-/var/cache/haproxy-acme-lab}/bin/pebble`.
pub fn pebble_bin() -> String {
    program("PEBBLE_BIN", &lab_bin("pebble"))
}

/// The pebble-challtestsrv the tests run: `CHALLTESTSRV_BIN`, else the one of pebble 2.10 next
/// to `pebble_bin()`'s default (`${LAB_DIR:-/var/cache/haproxy-acme-lab}/bin/pebble-challtestsrv`).
pub fn challtestsrv_bin() -> String {
    program("CHALLTESTSRV_BIN", &lab_bin("pebble-challtestsrv"))
}

/// `name` in the bin directory of `scripts/lab.sh`'s default destination (`LAB_DIR`).
fn lab_bin(name: &str) -> String {
    let lab = program("LAB_DIR", "/var/cache/haproxy-acme-lab");
    format!("{}/bin/{name}", lab.trim_end_matches('/'))
}

fn program(var: &str, default: &str) -> String {
    std::env::var(var)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

/// challtestsrv's DNS listener on `addr`: `-dns01` up to pebble 2.4 (bookworm); `-dnsserver` in
/// later ones (2.10), which also serve DNS over HTTPS on all interfaces (`:8443`) unless `-doh ""`.
fn challtestsrv_dns_args(addr: &str) -> Vec<String> {
    let help = Command::new(challtestsrv_bin())
        .arg("-h")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} -h: {e}", challtestsrv_bin()));
    let help = String::from_utf8_lossy(&help.stderr);
    if help.contains("-dnsserver") {
        vec![
            "-dnsserver".into(),
            addr.into(),
            "-doh".into(),
            String::new(),
        ]
    } else {
        vec!["-dns01".into(), addr.into()]
    }
}

/// Whether `program` (a path, or a name looked up on `PATH`) is an existing file.
fn installed(program: &str) -> bool {
    if program.contains('/') {
        return Path::new(program).is_file();
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

/// Fails the test unless every program the harness runs is installed.
fn require_programs() {
    let missing: Vec<String> = [
        pebble_bin(),
        challtestsrv_bin(),
        haproxy_bin(),
        "openssl".into(),
        "curl".into(),
        // The `import certbot` test imports what a real certbot run produced.
        "certbot".into(),
    ]
    .into_iter()
    .filter(|p| !installed(p))
    .collect();
    assert!(
        missing.is_empty(),
        "end-to-end tests need {missing:?}: run `bash scripts/install-deps.sh` (it installs \
         haproxy, openssl, curl, certbot with apt-get and pebble 2.10 into \
         ${{LAB_DIR:-/var/cache/haproxy-acme-lab}}/bin through `scripts/lab.sh`); HAPROXY_BIN, \
         PEBBLE_BIN and CHALLTESTSRV_BIN name other builds (e.g. `PEBBLE_BIN=pebble \
         CHALLTESTSRV_BIN=pebble-challtestsrv` for Debian bookworm's pebble 2.4)"
    );
}

/// A loopback port nobody listens on, for a program the test starts later.
///
/// Picked below the kernel's ephemeral range (`ip_local_port_range`): a port the kernel handed
/// out for `127.0.0.1:0` was free only at that instant, and any outgoing connection (to pebble, to
/// HAProxy) could take it as its source port before the program bound it (CI once saw the
/// daemon's RESPONDER_LISTEN taken that way). Each test process starts at its own offset and
/// hands every port out once; a port something already holds (TCP or UDP) is skipped.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::OnceLock;
    static RANGE: OnceLock<(u32, u32, u32)> = OnceLock::new();
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (low, span, start) = *RANGE.get_or_init(|| {
        let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
            .unwrap_or(32768);
        let low = if ephemeral_low >= 12_000 {
            10_000
        } else {
            1024
        };
        let span = ephemeral_low.saturating_sub(low).max(1000);
        let seed = std::process::id()
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos();
        (low, span, seed.wrapping_mul(2_654_435_761) % span)
    });
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(low + (start + n) % span).unwrap();
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
    panic!("no free loopback port in {low}..{}", low + span)
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A child process killed (and reaped) on drop.
pub struct Proc {
    pub name: &'static str,
    pub child: Child,
    pub log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(name: &'static str, dir: &Path, cmd: &mut Command) -> Proc {
    let log = dir.join(format!("{name}.log"));
    let out = std::fs::File::create(&log).unwrap();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    Proc { name, child, log }
}

fn spawn_pebble(dir: &Path, dns_port: u16, env: &[(String, String)]) -> Proc {
    spawn(
        "pebble",
        dir,
        Command::new(pebble_bin())
            .arg("-config")
            .arg(dir.join("pebble.json"))
            .args([
                "-dnsserver",
                &format!("127.0.0.1:{dns_port}"),
                "-strict=false",
            ])
            .envs(env.iter().map(|(k, v)| (k, v))),
    )
}

fn spawn_haproxy(dir: &Path, master_sock: &Path, env: &[(String, String)]) -> Proc {
    spawn(
        "haproxy",
        dir,
        Command::new(haproxy_bin())
            .arg("-W")
            .arg("-S")
            .arg(format!("{},mode,600", master_sock.display()))
            .arg("-f")
            .arg(repo_root().join("deploy/haproxy.cfg"))
            .envs(env.iter().map(|(k, v)| (k, v))),
    )
}

/// A number from environment variable `var`, or `default` (a seed: from the clock).
pub fn env_u64(var: &str, default: impl FnOnce() -> u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(default)
}

/// A seed from the clock, for a run `env_u64`'s variable can replay.
pub fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// What a command printed: its stdout, then its stderr.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `cmd`, which must succeed (its stderr in the failure).
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed (the tmpfs tests need root): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Asserts the private key in a `<id>.pem` file belongs to the certificate in it.
pub fn assert_key_matches_certificate(file: &Path) {
    let pubkey = |args: &[&str]| {
        String::from_utf8(run(Command::new("openssl").args(args).arg(file)).stdout).unwrap()
    };
    assert_eq!(
        pubkey(&["x509", "-noout", "-pubkey", "-in"]),
        pubkey(&["pkey", "-pubout", "-in"]),
        "{}: the key in the file belongs to its certificate",
        file.display()
    );
}

/// The daemon's `/metrics`, asked on its admin socket in `data_dir`.
pub fn daemon_metrics(data_dir: &Path) -> String {
    let out = Command::new("curl")
        .args(["-fsS", "--max-time", "5", "--unix-socket"])
        .arg(data_dir.join("admin.sock"))
        .arg("http://daemon/metrics")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "GET /metrics: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The sum of the samples of counter `name` (every label set) in a `/metrics` text.
pub fn metric_sum(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

pub fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(
            Instant::now() < deadline,
            "{what}: not ready after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub struct Env {
    pub dir: tempfile::TempDir,
    pub acme_port: u16,
    pub mgmt_port: u16,
    pub http_port: u16,
    pub https_port: u16,
    pub responder_port: u16,
    /// The daemon's TLS-ALPN-01 responder (`TLS_ALPN_LISTEN`), HAProxy's `be_acme_tls`.
    pub tls_alpn_port: u16,
    pub listener_ca: PathBuf,
    pub certs_dir: PathBuf,
    pub runtime_sock: PathBuf,
    pub master_sock: PathBuf,
    pub data_dir: PathBuf,
    procs: Vec<Proc>,
    pebble_env: Vec<(String, String)>,
    pub dns_port: u16,
    hap_env: Vec<(String, String)>,
    /// Certificates a previous pebble process issued (a restarted pebble forgets them).
    archived: Vec<Issued>,
    pebble_starts: u32,
    /// pebble-challtestsrv's management API (its DNS answers for pebble).
    pub chall_port: u16,
}

/// How the harness starts its CA.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Certificates valid for this many seconds (renewal tests); pebble's default otherwise.
    pub validity_secs: Option<u64>,
    /// Percentage of requests pebble answers with `badNonce` (`PEBBLE_WFE_NONCEREJECT`).
    pub nonce_reject: u8,
    /// The DNS server pebble asks instead of challtestsrv's (whose uncompressed answers do not
    /// fit pebble 2.4's 512-byte UDP reads for names over ~186 characters; 2.10 asks over TCP).
    pub dns_port: Option<u16>,
    /// ACME profiles pebble (2.10) offers beside `default`: (name, validity in seconds). pebble
    /// picks one at random for an order that names none.
    pub profiles: Vec<(String, u64)>,
    /// pebble's `externalAccountBindingRequired`.
    pub eab_required: bool,
    /// pebble's `externalAccountMACKeys`: key id → HMAC key (base64url without padding).
    pub eab_keys: Vec<(String, String)>,
    /// HAProxy's APP_BACKEND port on 127.0.0.1 (none: port 9, where nothing listens).
    pub app_port: Option<u16>,
}

/// One certificate pebble issued: its serial (hex, as pebble logs it), sorted DNS names, notBefore.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    pub serial: String,
    pub names: Vec<String>,
    pub not_before: i64,
    /// Which pebble process issued it (1 = the first; `Env::restart_pebble` starts the next).
    pub pebble_run: u32,
    /// The serial of the certificate its order replaces, when pebble accepted the order as a
    /// replacement (RFC 9773 `replaces`; pebble 2.10 logs it, 2.4 has no renewal information).
    pub replaces: Option<String>,
}

impl Issued {
    /// Whether this certificate is a renewal of `prev` (same names, issued just before it), not a
    /// duplicate. A renewal either names `prev` as the certificate it replaces (the daemon sends
    /// `replaces` only for a renewal inside the window the CA suggested for `prev`, and pebble
    /// 2.10 accepts it only once), or, ordered without `replaces`, comes at least half of
    /// `validity_secs` after `prev` (the lifetime rule of a daemon without the CA's window; 2 s
    /// of slack for notBefore's one-second resolution). With renewal information (`ari`), `prev`
    /// issued by an earlier pebble process excuses a renewal without `replaces` at any time: the
    /// restarted pebble refuses to be told of a certificate it never issued, and the daemon's
    /// window came from the old one. Nor can pebble 2.10 be told of a certificate whose serial
    /// starts with a byte of 0x80 or more (one in 256 of its serials: 7 bytes, high bit set;
    /// letsencrypt/pebble#550: it answers 500 and the daemon orders without `replaces`).
    pub fn renews(&self, prev: &Issued, validity_secs: i64, ari: bool) -> bool {
        match &self.replaces {
            Some(replaced) => *replaced == prev.serial,
            None => {
                self.not_before - prev.not_before >= validity_secs / 2 - 2
                    || (ari && prev.pebble_run != self.pebble_run)
                    || (ari && pebble_cannot_find(&prev.serial))
            }
        }
    }
}

/// Whether pebble 2.10 fails a `replaces` naming this serial (hex, as pebble writes it, without
/// a sign byte): its DER form then has a 0x00 byte in front that pebble's lookup does not strip
/// (letsencrypt/pebble#550).
pub fn pebble_cannot_find(serial: &str) -> bool {
    let hex = serial.trim_start_matches('0');
    hex.len() % 2 == 0
        && hex
            .chars()
            .next()
            .is_some_and(|c| c.to_digit(16).unwrap_or(0) >= 8)
}

/// For each set of names, the certificates pebble issued in issuance order, checked with
/// `Issued::renews`: the pairs that are not a renewal (duplicate issuance), as messages.
pub fn duplicate_issuances(issued: &[Issued], validity_secs: i64, ari: bool) -> Vec<String> {
    let mut per_names: std::collections::BTreeMap<&[String], Vec<&Issued>> = Default::default();
    for c in issued {
        per_names.entry(&c.names).or_default().push(c);
    }
    let mut bad = Vec::new();
    for (names, certs) in per_names {
        for w in certs.windows(2) {
            if !w[1].renews(w[0], validity_secs, ari) {
                bad.push(format!(
                    "{names:?}: {} (notBefore {}, replaces {:?}) {}s after {} is not its renewal; \
                     all: {certs:?}",
                    w[1].serial,
                    w[1].not_before,
                    w[1].replaces,
                    w[1].not_before - w[0].not_before,
                    w[0].serial,
                ));
            }
        }
    }
    bad
}

impl Env {
    /// The CPU seconds so far of each process the harness started (pebble, HAProxy with its
    /// worker, ...), by name: the benches' account of where the cores went.
    pub fn cpu_seconds(&self) -> Vec<(&'static str, f64)> {
        self.procs
            .iter()
            .map(|p| (p.name, tree_cpu_ticks(p.child.id()) as f64 / 100.0))
            .collect()
    }

    /// Starts challtestsrv, pebble and HAProxy and waits until each answers.
    pub fn start() -> Env {
        Env::start_with(None)
    }

    /// Like `start`, with pebble issuing certificates valid for `validity_secs` (renewal tests).
    pub fn start_with(validity_secs: Option<u64>) -> Env {
        Env::start_opts(Options {
            validity_secs,
            ..Options::default()
        })
    }

    /// Starts the environment with these `Options`.
    pub fn start_opts(opts: Options) -> Env {
        // A free port is found by binding port 0 and letting it go, so a test running beside
        // this one can take it first: then everything starts again on other ports.
        const TRIES: u32 = 5;
        for attempt in 1..=TRIES {
            match Env::try_start(opts.clone()) {
                Ok(env) => return env,
                Err(log) if attempt < TRIES => {
                    eprintln!("harness: a port was taken meanwhile, starting again: {log}")
                }
                Err(log) => panic!("ports taken {TRIES} times in a row: {log}"),
            }
        }
        unreachable!("the last try returns or panics")
    }

    /// Starts everything once; `Err(log)` when a program found its port taken.
    fn try_start(opts: Options) -> Result<Env, String> {
        let validity_secs = opts.validity_secs;
        require_programs();
        let dir = tempfile::Builder::new()
            .prefix("haproxy-acme-e2e")
            .tempdir()
            .unwrap();
        let d = dir.path();
        let (acme_port, mgmt_port, http_port, https_port) =
            (free_port(), free_port(), free_port(), free_port());
        let (responder_port, dns_port, chall_port) = (free_port(), free_port(), free_port());
        let tls_alpn_port = free_port();
        let certs_dir = d.join("certs");
        let data_dir = d.join("data");
        std::fs::create_dir_all(&certs_dir).unwrap();

        // Pebble's own HTTPS listener needs a certificate; the Debian package ships none.
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "e2e pebble listener CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        let listener_ca = d.join("listener-ca.pem");
        std::fs::write(&listener_ca, ca.pem()).unwrap();
        std::fs::write(d.join("pebble-cert.pem"), leaf.pem()).unwrap();
        std::fs::write(d.join("pebble-key.pem"), leaf_key.serialize_pem()).unwrap();
        // pebble 2.4 reads `certificateValidityPeriod`; 2.10 the validity of the profile an order
        // names (none: "default") and ignores the former once `profiles` is given, which 2.4 ignores.
        let mut validity = validity_secs
            .map(|v| format!(",\n    \"certificateValidityPeriod\": {v}"))
            .unwrap_or_default();
        if validity_secs.is_some() || !opts.profiles.is_empty() {
            // validityPeriod 0: pebble's default (90 days).
            let default = [("default".to_string(), validity_secs.unwrap_or(0))];
            validity.push_str(&format!(
                ",\n    \"profiles\": {}",
                profiles_json(default.iter().chain(&opts.profiles))
            ));
        }
        std::fs::write(
            d.join("pebble.json"),
            format!(
                r#"{{"pebble": {{
    "listenAddress": "127.0.0.1:{acme_port}",
    "managementListenAddress": "127.0.0.1:{mgmt_port}",
    "certificate": "{cert}",
    "privateKey": "{key}",
    "httpPort": {http_port},
    "tlsPort": {https_port},
    "ocspResponderURL": "",
    "externalAccountBindingRequired": {eab_required},
    "externalAccountMACKeys": {eab_keys}{validity}
}}}}"#,
                cert = d.join("pebble-cert.pem").display(),
                key = d.join("pebble-key.pem").display(),
                eab_required = opts.eab_required,
                eab_keys = serde_json::Value::Object(
                    opts.eab_keys
                        .iter()
                        .map(|(k, v)| (k.clone(), serde_json::Value::from(v.as_str())))
                        .collect()
                ),
            ),
        )
        .unwrap();

        // HAProxy needs a certificate in the directory before it starts: the daemon's own default.
        haproxy_acme::installer::Installer::new(certs_dir.clone(), certs_dir.clone(), None)
            .prepare_certs_dir()
            .unwrap();

        let mut procs = Vec::new();
        procs.push(spawn(
            "challtestsrv",
            d,
            Command::new(challtestsrv_bin())
                .args(challtestsrv_dns_args(&format!("127.0.0.1:{dns_port}")))
                .args([
                    "-http01",
                    "",
                    "-https01",
                    "",
                    "-tlsalpn01",
                    "",
                    "-management",
                    &format!("127.0.0.1:{chall_port}"),
                    "-defaultIPv4",
                    "127.0.0.1",
                    "-defaultIPv6",
                    "",
                ]),
        ));
        let pebble_env: Vec<(String, String)> = vec![
            ("PEBBLE_VA_NOSLEEP".into(), "1".into()),
            (
                "PEBBLE_WFE_NONCEREJECT".into(),
                opts.nonce_reject.to_string(),
            ),
            ("PEBBLE_AUTHZREUSE".into(), "0".into()),
        ];
        let dns_port = opts.dns_port.unwrap_or(dns_port);
        procs.push(spawn_pebble(d, dns_port, &pebble_env));
        let runtime_sock = d.join("haproxy-admin.sock");
        let master_sock = d.join("haproxy-master.sock");
        let cfg = repo_root().join("deploy/haproxy.cfg");
        let hap_env = haproxy_env(
            [http_port, https_port, responder_port, tls_alpn_port],
            opts.app_port,
            &certs_dir,
            &runtime_sock,
        );
        let check = Command::new(haproxy_bin())
            .args(["-c", "-f"])
            .arg(&cfg)
            .envs(hap_env.clone())
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "haproxy -c rejects deploy/haproxy.cfg: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        procs.push(spawn_haproxy(d, &master_sock, &hap_env));
        let env = Env {
            dir,
            acme_port,
            mgmt_port,
            http_port,
            https_port,
            responder_port,
            tls_alpn_port,
            listener_ca,
            certs_dir,
            runtime_sock,
            master_sock,
            data_dir,
            procs,
            pebble_env,
            dns_port,
            hap_env: hap_env.clone(),
            archived: Vec::new(),
            pebble_starts: 1,
            chall_port,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(log) = env.port_taken() {
                return Err(log);
            }
            env.assert_alive();
            if env.curl(&env.directory_url()).is_some()
                && env.runtime("show info").contains("Name: HAProxy")
            {
                return Ok(env);
            }
            assert!(
                Instant::now() < deadline,
                "pebble and HAProxy not ready after {READY_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The log of a program that exited because its port was taken.
    fn port_taken(&self) -> Option<String> {
        self.procs.iter().find_map(|p| {
            let dead = std::fs::metadata(format!("/proc/{}", p.child.id())).is_err()
                || is_zombie(p.child.id());
            let log = std::fs::read_to_string(&p.log).unwrap_or_default();
            (dead && log.to_lowercase().contains("address already in use"))
                .then(|| format!("{}: {}", p.name, log.trim()))
        })
    }

    fn assert_alive(&self) {
        for p in &self.procs {
            let log = std::fs::read_to_string(&p.log).unwrap_or_default();
            assert!(
                std::fs::metadata(format!("/proc/{}", p.child.id())).is_ok()
                    && !is_zombie(p.child.id()),
                "{} exited; its log:\n{log}",
                p.name
            );
        }
    }

    /// Kills pebble (SIGKILL) and starts a new one on the same ports: a CA that forgot every
    /// account and order (and has a new issuing root). What the old one issued is kept for
    /// `issued()`.
    pub fn restart_pebble(&mut self) {
        let mut issued = self.issued_by_running_pebble();
        self.archived.append(&mut issued);
        self.respawn_pebble();
    }

    /// Kills pebble and starts a new one on the same ports without asking the old one what it
    /// issued (`issued()` then misses it): for a pebble that no longer answers (its store's
    /// deadlock, letsencrypt/pebble#270). Its log is kept as `pebble-N.log` (`pebble_log`).
    pub fn respawn_pebble(&mut self) {
        let i = self.procs.iter().position(|p| p.name == "pebble").unwrap();
        let old = self.procs.remove(i);
        let log = old.log.clone();
        drop(old);
        let n = self.pebble_starts;
        std::fs::rename(&log, self.dir.path().join(format!("pebble-{n}.log"))).unwrap();
        self.pebble_starts += 1;
        self.procs.push(spawn_pebble(
            self.dir.path(),
            self.dns_port,
            &self.pebble_env,
        ));
        wait_until("pebble directory after restart", READY_TIMEOUT, || {
            self.assert_alive();
            self.curl(&self.directory_url()).is_some()
        });
    }

    /// Rewrites the profiles of pebble's configuration (name, validity in seconds): the next
    /// `restart_pebble` offers these.
    pub fn set_pebble_profiles(&self, profiles: &[(&str, u64)]) {
        let file = self.dir.path().join("pebble.json");
        let mut config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let profiles: Vec<(String, u64)> =
            profiles.iter().map(|(n, v)| (n.to_string(), *v)).collect();
        config["pebble"]["profiles"] = serde_json::from_str(&profiles_json(&profiles)).unwrap();
        std::fs::write(&file, config.to_string()).unwrap();
    }

    /// Kills HAProxy (SIGKILL), master and workers.
    pub fn kill_haproxy(&mut self) {
        let i = self.procs.iter().position(|p| p.name == "haproxy").unwrap();
        drop(self.procs.remove(i));
        // The master's workers die with it (master-worker mode); wait until the socket is dead.
        wait_until("HAProxy gone", READY_TIMEOUT, || {
            UnixStream::connect(&self.runtime_sock).is_err()
        });
    }

    /// Starts HAProxy again from the certificate directory (after `kill_haproxy`).
    pub fn start_haproxy(&mut self) {
        assert!(self.procs.iter().all(|p| p.name != "haproxy"));
        let _ = std::fs::remove_file(&self.runtime_sock);
        let _ = std::fs::remove_file(&self.master_sock);
        self.procs.push(spawn_haproxy(
            self.dir.path(),
            &self.master_sock,
            &self.hap_env,
        ));
        wait_until("haproxy runtime API after restart", READY_TIMEOUT, || {
            self.assert_alive();
            self.runtime("show info").contains("Name: HAProxy")
        });
    }

    /// Makes pebble's DNS (challtestsrv) answer SERVFAIL for `host` (`on`), so pebble cannot
    /// validate it, or answer normally again.
    pub fn dns_servfail(&self, host: &str, on: bool) {
        let path = if on { "set-servfail" } else { "clear-servfail" };
        self.challtestsrv(path, &serde_json::json!({ "host": host }));
    }

    /// POSTs `body` to challtestsrv's management API at `/path`; panics unless it succeeds.
    pub fn challtestsrv(&self, path: &str, body: &serde_json::Value) {
        let out = Command::new("curl")
            .args(["-fsS", "--max-time", "5", "-X", "POST", "-d"])
            .arg(body.to_string())
            .arg(format!("http://127.0.0.1:{}/{path}", self.chall_port))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "challtestsrv /{path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Every certificate pebble issued in this run, across pebble restarts.
    pub fn issued(&self) -> Vec<Issued> {
        let mut all = self.archived.clone();
        all.extend(self.issued_by_running_pebble());
        all
    }

    /// The running pebble's issued certificates: serials from its log, names and notBefore from
    /// its management API.
    fn issued_by_running_pebble(&self) -> Vec<Issued> {
        // "Issued certificate serial S for order O" in issuance order, and "ARI: order "N" is a
        // replacement of "O"" (pebble 2.10) when order N named O's certificate as replaced.
        let log = self.running_pebble_log();
        let mut serials: Vec<(String, String)> = Vec::new();
        let mut replaced_order = std::collections::HashMap::new();
        for l in log.lines() {
            if let Some(rest) = l.split("Issued certificate serial ").nth(1) {
                let mut w = rest.split_whitespace();
                let serial = w.next().unwrap().to_string();
                let order = w.nth(2).unwrap_or_default().to_string();
                serials.push((serial, order));
            } else if let Some(rest) = l.split("ARI: order ").nth(1) {
                let q: Vec<&str> = rest.split('"').collect();
                if q.len() >= 4 {
                    replaced_order.insert(q[1].to_string(), q[3].to_string());
                }
            }
        }
        let serial_of: std::collections::HashMap<String, String> = serials
            .iter()
            .map(|(s, o)| (o.clone(), s.clone()))
            .collect();
        serials
            .into_iter()
            .map(|(serial, order)| {
                let replaces = replaced_order
                    .get(&order)
                    .and_then(|o| serial_of.get(o))
                    .cloned();
                let v: serde_json::Value = serde_json::from_str(
                    &self
                        .curl(&format!(
                            "https://127.0.0.1:{}/cert-status-by-serial/{serial}",
                            self.mgmt_port
                        ))
                        .unwrap_or_else(|| panic!("pebble has no certificate {serial}")),
                )
                .unwrap();
                let pem = v["Certificate"]
                    .as_str()
                    .unwrap_or_else(|| panic!("no Certificate in {v}"));
                let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
                let cert = pem.parse_x509().unwrap();
                let mut names: Vec<String> = cert
                    .subject_alternative_name()
                    .unwrap()
                    .map(|san| {
                        san.value
                            .general_names
                            .iter()
                            .filter_map(|n| match n {
                                x509_parser::extensions::GeneralName::DNSName(d) => {
                                    Some(d.to_string())
                                }
                                _ => None,
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                names.sort();
                Issued {
                    serial,
                    names,
                    not_before: cert.validity().not_before.timestamp(),
                    pebble_run: self.pebble_starts,
                    replaces,
                }
            })
            .collect()
    }

    /// Pebble's status of the certificate with `serial` (hex, any case, leading zeros or not),
    /// from its management API: `{"Status": "Valid"|"Revoked", "Reason": ..., ...}`.
    pub fn pebble_cert_status(&self, serial: &str) -> Option<serde_json::Value> {
        let serial = serial.trim_start_matches('0').to_lowercase();
        let body = self.curl(&format!(
            "https://127.0.0.1:{}/cert-status-by-serial/{serial}",
            self.mgmt_port
        ))?;
        serde_json::from_str(&body).ok()
    }

    /// Forces the renewal window pebble (2.10) answers for the certificate `cert_pem` (its
    /// leaf first) through its management API (`POST /set-renewal-info/`).
    pub fn pebble_set_renewal_window(&self, cert_pem: &str, start: i64, end: i64) {
        let t = |s: i64| {
            time::OffsetDateTime::from_unix_timestamp(s)
                .unwrap()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap()
        };
        let ari = serde_json::json!({"suggestedWindow": {"start": t(start), "end": t(end)}});
        let body = serde_json::json!({"Certificate": cert_pem, "ARIResponse": ari.to_string()});
        let out = Command::new("curl")
            .args(["-fsS", "--max-time", "5", "--cacert"])
            .arg(&self.listener_ca)
            .args(["-X", "POST", "--data-binary"])
            .arg(body.to_string())
            .arg(format!(
                "https://127.0.0.1:{}/set-renewal-info/",
                self.mgmt_port
            ))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pebble's set-renewal-info (pebble 2.10 and later) failed: {}",
            text(&out)
        );
    }

    /// Whether this pebble offers renewal information (RFC 9773): its directory names
    /// `renewalInfo` (pebble 2.10; 2.4 does not).
    pub fn offers_renewal_info(&self) -> bool {
        let dir = self
            .curl(&self.directory_url())
            .expect("pebble's directory answers");
        let dir: serde_json::Value = serde_json::from_str(&dir).unwrap();
        dir.get("renewalInfo").is_some()
    }

    pub fn directory_url(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.acme_port)
    }

    pub fn curl(&self, url: &str) -> Option<String> {
        let out = Command::new("curl")
            .args(["-fsS", "--max-time", "5", "--cacert"])
            .arg(&self.listener_ca)
            .arg(url)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Pebble's issuing root for this run (it makes a new one at every start).
    pub fn issuer_root(&self) -> PathBuf {
        let path = self.dir.path().join("issuer-root.pem");
        let pem = self
            .curl(&format!("https://127.0.0.1:{}/roots/0", self.mgmt_port))
            .expect("pebble management API answers /roots/0");
        std::fs::write(&path, pem).unwrap();
        path
    }

    /// One command on HAProxy's runtime API (level admin).
    pub fn runtime(&self, cmd: &str) -> String {
        unix_command(&self.runtime_sock, cmd)
    }

    /// One command on HAProxy's master CLI.
    pub fn master(&self, cmd: &str) -> String {
        unix_command(&self.master_sock, cmd)
    }

    /// HAProxy's reload count, from the master CLI's `show proc`.
    pub fn haproxy_reloads(&self) -> u32 {
        // The master CLI can answer nothing for a moment right after start (seen once in the
        // installer test, HAProxy 2.6): ask again for up to 5 s.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut out = self.master("show proc");
        while out.trim().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            out = self.master("show proc");
        }
        let line = out
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some("master"))
            .unwrap_or_else(|| panic!("no master line in show proc: {out}"));
        line.split_whitespace().nth(2).unwrap().parse().unwrap()
    }

    /// How many orders pebble created (its log has one line per new-order request).
    pub fn pebble_new_orders(&self) -> usize {
        self.pebble_log()
            .lines()
            .filter(|l| l.contains("POST /order-plz"))
            .count()
    }

    /// How many finalize requests pebble received.
    pub fn pebble_finalizes(&self) -> usize {
        self.pebble_log()
            .lines()
            .filter(|l| l.contains("POST /finalize-order/"))
            .count()
    }

    /// Everything every pebble process of this run logged (restarts included).
    pub fn pebble_log(&self) -> String {
        let mut all = String::new();
        for n in 1..self.pebble_starts {
            all.push_str(
                &std::fs::read_to_string(self.dir.path().join(format!("pebble-{n}.log")))
                    .unwrap_or_default(),
            );
        }
        all + &self.running_pebble_log()
    }

    /// How many orders the running pebble process created (since its last restart).
    pub fn running_pebble_new_orders(&self) -> usize {
        self.running_pebble_log()
            .lines()
            .filter(|l| l.contains("POST /order-plz"))
            .count()
    }

    /// How many finalize requests the running pebble process received.
    pub fn running_pebble_finalizes(&self) -> usize {
        self.running_pebble_log()
            .lines()
            .filter(|l| l.contains("POST /finalize-order/"))
            .count()
    }

    /// What the running pebble process logged (since its last restart).
    pub fn running_pebble_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }

    /// The name HAProxy gives the certificates directory's crt-list (`show ssl crt-list`).
    pub fn crt_list_name(&self) -> String {
        let out = self.runtime("show ssl crt-list");
        let dir = self.certs_dir.display().to_string();
        out.lines()
            .map(str::trim)
            .find(|l| l.trim_end_matches('/') == dir.trim_end_matches('/'))
            .unwrap_or_else(|| panic!("no crt-list for {dir} in: {out}"))
            .to_string()
    }

    /// How many of the files named `<prefix>*` are in HAProxy's crt-list `crt_list` (served);
    /// the benches' progress count.
    pub fn served_count(&self, crt_list: &str, prefix: &str) -> usize {
        self.runtime(&format!("show ssl crt-list {crt_list}"))
            .lines()
            .filter(|l| {
                l.split_whitespace()
                    .next()
                    .and_then(|f| Path::new(f).file_name())
                    .and_then(|f| f.to_str())
                    .is_some_and(|f| f.starts_with(prefix))
            })
            .count()
    }

    /// The serial (upper-case hex) of the certificate HAProxy serves for `name`, without
    /// verifying its chain (a restarted pebble has a new root).
    pub fn served_serial(&self, name: &str) -> Option<String> {
        self.served_x509(name, "-serial")?
            .trim()
            .strip_prefix("serial=")
            .map(|s| s.trim_start_matches('0').to_uppercase())
    }

    /// `openssl x509 -noout <fields>` of the certificate HAProxy serves for `name`.
    pub fn served_x509(&self, name: &str, fields: &str) -> Option<String> {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "openssl s_client -connect 127.0.0.1:{} -servername {name} </dev/null 2>/dev/null \
                 | openssl x509 -noout {fields}",
                self.https_port
            ))
            .output()
            .ok()?;
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The environment the daemon runs with, for `domains`.
    pub fn daemon_env(&self, domains: &str) -> Vec<(String, String)> {
        vec![
            ("DOMAINS".into(), domains.into()),
            ("EMAIL".into(), "e2e@example.test".into()),
            ("ACME_DIRECTORY".into(), self.directory_url()),
            (
                "ACME_CA_BUNDLE".into(),
                self.listener_ca.display().to_string(),
            ),
            ("DATA_DIR".into(), self.data_dir.display().to_string()),
            ("CERTS_DIR".into(), self.certs_dir.display().to_string()),
            (
                "HAPROXY_RUNTIME_API".into(),
                format!("unix:{}", self.runtime_sock.display()),
            ),
            (
                "RESPONDER_LISTEN".into(),
                format!("127.0.0.1:{}", self.responder_port),
            ),
            // The test names resolve only in challtestsrv (pebble's DNS): the preflight fetches
            // tokens where pebble does, HAProxy's HTTP port.
            (
                "PREFLIGHT_HTTP_ADDRESS".into(),
                format!("127.0.0.1:{}", self.http_port),
            ),
            (
                "PREFLIGHT_TLS_ADDRESS".into(),
                format!("127.0.0.1:{}", self.https_port),
            ),
            // Zones and NS servers are looked up at pebble's DNS (challtestsrv, or the test's
            // BIND), never at this machine's resolver: no query leaves 127.0.0.0/8.
            (
                "DNS_RESOLVER".into(),
                format!("127.0.0.1:{}", self.dns_port),
            ),
            (
                "TLS_ALPN_LISTEN".into(),
                format!("127.0.0.1:{}", self.tls_alpn_port),
            ),
            ("RUST_LOG".into(), "info,haproxy_acme=debug".into()),
        ]
    }

    /// Starts `haproxy-acme run` for `domains`; its log goes to `daemon-N.log`.
    pub fn start_daemon(&self, domains: &str) -> Daemon {
        self.start_daemon_with(domains, &[])
    }

    /// Starts the daemon with some variables of `daemon_env` overridden.
    pub fn start_daemon_with(&self, domains: &str, overrides: &[(&str, &str)]) -> Daemon {
        spawn_daemon(self.dir.path(), self.daemon_env(domains), overrides)
    }

    /// [`start_daemon_with`](Env::start_daemon_with) the build at `bin`.
    pub fn start_daemon_bin(&self, bin: &str, domains: &str, overrides: &[(&str, &str)]) -> Daemon {
        spawn_daemon_bin(bin, self.dir.path(), self.daemon_env(domains), overrides)
    }

    /// `haproxy-acme run` for `domains` to its exit (bounded: 60 s), with some variables of
    /// `daemon_env` overridden: its status code and output (start-up refusals).
    pub fn run_to_exit(&self, domains: &str, overrides: &[(&str, &str)]) -> (Option<i32>, String) {
        let out = Command::new("timeout")
            .arg("60")
            .arg(BIN)
            .arg("run")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.daemon_env(domains))
            .envs(overrides.iter().copied())
            .output()
            .unwrap();
        (out.status.code(), text(&out))
    }

    /// The subjectAltName (and issuer) of the certificate HAProxy serves for `sni`; empty when
    /// none answers.
    pub fn served_sans(&self, sni: &str) -> String {
        self.served_x509(sni, "-ext subjectAltName -issuer")
            .unwrap_or_default()
    }

    /// Asserts that HAProxy serves, for each of `snis`, one certificate from pebble for `apex`
    /// and `*.apex` (the two names side by side, in either order).
    pub fn assert_serves_apex_and_wildcard(&self, apex: &str, snis: &[&str]) {
        let (a, w) = (format!("DNS:{apex}"), format!("DNS:*.{apex}"));
        for sni in snis {
            let sans = self.served_sans(sni);
            assert!(
                sans.contains(&format!("{a}, {w}")) || sans.contains(&format!("{w}, {a}")),
                "{sni}: {sans}"
            );
            assert!(
                sans.to_lowercase().contains("pebble"),
                "issued by pebble: {sans}"
            );
        }
    }

    /// Runs a CLI command of the daemon's binary with the daemon's environment.
    pub fn cli(&self, domains: &str, args: &[&str]) -> Output {
        self.cli_with(domains, &[], args)
    }

    /// Runs a CLI command with some variables of `daemon_env` overridden.
    pub fn cli_with(&self, domains: &str, overrides: &[(&str, &str)], args: &[&str]) -> Output {
        cli_in(self.daemon_env(domains), overrides, args)
    }

    /// Runs certbot 2 (Debian's package) against this pebble: `certonly --standalone` on the
    /// responder's port, where HAProxy sends validation traffic. Returns its config directory (one
    /// per first name).
    pub fn certbot(&self, names: &[&str]) -> PathBuf {
        let base = self.dir.path().join(format!("certbot-{}", names[0]));
        let mut cmd = Command::new("certbot");
        cmd.args([
            "certonly",
            "--non-interactive",
            "--agree-tos",
            "--register-unsafely-without-email",
            "--standalone",
            "--http-01-address",
            "127.0.0.1",
            "--http-01-port",
            &self.responder_port.to_string(),
            "--server",
            &self.directory_url(),
        ])
        .arg("--config-dir")
        .arg(base.join("config"))
        .arg("--work-dir")
        .arg(base.join("work"))
        .arg("--logs-dir")
        .arg(base.join("logs"))
        .env("REQUESTS_CA_BUNDLE", &self.listener_ca);
        for n in names {
            cmd.args(["-d", n]);
        }
        let out = cmd.output().expect("run certbot");
        assert!(
            out.status.success(),
            "certbot failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        base.join("config")
    }

    /// Connects to HAProxy's TLS frontend with `name` as SNI and verifies the chain against
    /// pebble's root and the host name. Returns openssl's output when it verifies.
    pub fn served_and_valid(&self, name: &str, root: &Path) -> Option<String> {
        let out = Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &format!("127.0.0.1:{}", self.https_port),
            ])
            .args([
                "-servername",
                name,
                "-verify_hostname",
                name,
                "-verify_return_error",
                "-CAfile",
            ])
            .arg(root)
            .stdin(Stdio::null())
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.success() && text.contains("Verify return code: 0 (ok)")).then_some(text)
    }
}

/// pebble 2.10's `profiles` map: name -> description and validity in seconds.
fn profiles_json<'a>(profiles: impl IntoIterator<Item = &'a (String, u64)>) -> String {
    let map: serde_json::Map<String, serde_json::Value> = profiles
        .into_iter()
        .map(|(name, secs)| {
            (
                name.clone(),
                serde_json::json!({"description": format!("e2e {name}"), "validityPeriod": secs}),
            )
        })
        .collect();
    serde_json::Value::Object(map).to_string()
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(true)
}

/// deploy/haproxy.cfg's environment: ports of HTTP, HTTPS, the HTTP-01 and TLS-ALPN-01
/// responders; the application's port.
fn haproxy_env(
    [http, https, responder, tls_alpn]: [u16; 4],
    app: Option<u16>,
    certs: &Path,
    sock: &Path,
) -> Vec<(String, String)> {
    vec![
        // The :443 → fe_https hop: an abstract socket of its own per HAProxy (the shipped
        // default's kind of address), unique by the HTTPS port.
        (
            "HAPROXY_TLS_HOP".into(),
            format!("abns@haproxy-acme-tls-{https}"),
        ),
        (
            "ACME_TLS_ALPN_RESPONDER".into(),
            format!("127.0.0.1:{tls_alpn}"),
        ),
        ("HAPROXY_HTTP_BIND".into(), format!("127.0.0.1:{http}")),
        ("HAPROXY_HTTPS_BIND".into(), format!("127.0.0.1:{https}")),
        ("CERTS_DIR".into(), certs.display().to_string()),
        ("HAPROXY_RUNTIME_SOCKET".into(), sock.display().to_string()),
        ("ACME_RESPONDER".into(), format!("127.0.0.1:{responder}")),
        // Port 9: nothing listens there (most tests only look at TLS).
        (
            "APP_BACKEND".into(),
            format!("127.0.0.1:{}", app.unwrap_or(9)),
        ),
    ]
}

fn unix_command(sock: &Path, cmd: &str) -> String {
    let Ok(mut s) = UnixStream::connect(sock) else {
        return String::new();
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(format!("{cmd}\n").as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// Starts `haproxy-acme run` with only `env` (and `overrides`) and PATH; its log goes to
/// `dir/daemon-N.log`.
pub fn spawn_daemon(dir: &Path, env: Vec<(String, String)>, overrides: &[(&str, &str)]) -> Daemon {
    spawn_daemon_bin(BIN, dir, env, overrides)
}

/// [`spawn_daemon`] of the build at `bin` (the benches' before and after).
pub fn spawn_daemon_bin(
    bin: &str,
    dir: &Path,
    env: Vec<(String, String)>,
    overrides: &[(&str, &str)],
) -> Daemon {
    let n = std::fs::read_dir(dir).unwrap().count();
    let log = dir.join(format!("daemon-{n}.log"));
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new(bin)
        .arg("run")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env)
        .envs(overrides.iter().copied())
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("start haproxy-acme");
    Daemon {
        child: Some(child),
        log,
    }
}

/// `haproxy-acme ARGS` with only `env` (and `overrides`) and PATH, to its exit.
pub fn cli_in(env: Vec<(String, String)>, overrides: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env)
        .envs(overrides.iter().copied())
        .output()
        .unwrap()
}

/// The running daemon; killed on drop unless stopped.
pub struct Daemon {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon running").id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
            panic!(
                "the daemon exited ({status}); its log:\n{}",
                self.log_text()
            );
        }
    }

    /// SIGHUP: read the configuration again.
    pub fn hup(&mut self) {
        let pid = self.child.as_ref().expect("daemon running").id();
        let _ = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status();
    }

    /// SIGKILL: the crash the durable-intent rule is for.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("daemon still running");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// SIGTERM, then waits (bounded) for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("daemon still running");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the daemon did not exit within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `n` records shaped like issued, installed certificates from `directory` (a CA without renewal
/// information), and the DOMAINS_FILE that wants them: the scale test's and the benchmark's data.
pub fn issued_records(
    n: usize,
    directory: &str,
    now: i64,
) -> (Vec<haproxy_acme_state::Record>, String) {
    issued_records_from(0, n, directory, now)
}

/// [`issued_records`] numbered `from` to `to` (exclusive): a large set made in batches.
pub fn issued_records_from(
    from: usize,
    to: usize,
    directory: &str,
    now: i64,
) -> (Vec<haproxy_acme_state::Record>, String) {
    let mut names = String::with_capacity((to - from) * 32);
    let mut records = Vec::with_capacity(to - from);
    for i in from..to {
        let id = format!("s{i}.example.test");
        let not_before = now - 86_400 * (i as i64 % 30);
        let meta = haproxy_acme_state::CertMeta {
            serial: format!("{:016X}", i as u64 * 7919 + 1),
            not_before,
            not_after: not_before + 90 * 86_400,
            fingerprint: format!("{i:064x}"),
            issued_at: not_before,
        };
        let r = issued_record(
            vec![id.clone(), format!("www.{id}")],
            directory,
            i,
            meta,
            now,
        );
        names.push_str(&format!("{},{}\n", r.names[0], r.names[1]));
        records.push(r);
    }
    (records, names)
}

/// One record shaped like an issued, installed certificate `meta` for `names` from `directory`
/// (a CA without renewal information: the lifetime rule sets its renewal time), as if ordered
/// with order number `order`: the seeded stores' record.
pub fn issued_record(
    names: Vec<String>,
    directory: &str,
    order: usize,
    meta: haproxy_acme_state::CertMeta,
    now: i64,
) -> haproxy_acme_state::Record {
    use haproxy_acme_state::{apply, Event, KeyType, Record};
    let r = Record::new(names, KeyType::EcdsaP256, now - 86_400);
    let r = apply(
        &r,
        Event::Configured {
            names: r.names.clone(),
            key_type: r.key_type,
            acme_directory: directory.into(),
            deploy_hook: false,
            profile: None,
        },
        now,
    );
    let r = apply(
        &r,
        Event::OrderCreated {
            url: format!("https://ca/order/{order}"),
        },
        now,
    );
    let fingerprint = meta.fingerprint.clone();
    let r = apply(&r, Event::CertificateStored { meta }, now);
    let r = apply(&r, Event::Installed { fingerprint }, now);
    apply(&r, Event::RenewalInfoUnavailable { retry_at: None }, now)
}

/// A `/proc/PID/status` field in KiB (`VmRSS:`, `VmHWM:`; 0 when unreadable): the benches'.
pub fn proc_status(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A process's utime + stime in clock ticks (10 ms).
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

/// [`cpu_ticks`] of a process and of every process below it (HAProxy's master and its worker).
pub fn tree_cpu_ticks(pid: u32) -> u64 {
    let children: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|task| {
            std::fs::read_to_string(task.path().join("children"))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|c| c.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect();
    cpu_ticks(pid) + children.into_iter().map(tree_cpu_ticks).sum::<u64>()
}

/// The lines of a JSON log (`LOG_FORMAT=json`) with their time in seconds since the epoch;
/// lines that are not JSON or carry no RFC 3339 `timestamp` are left out.
pub fn timed_json_lines(log: &str) -> impl Iterator<Item = (f64, serde_json::Value)> + '_ {
    log.lines().filter_map(|line| {
        let v = serde_json::from_str::<serde_json::Value>(line).ok()?;
        let t = v["timestamp"].as_str().and_then(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        })?;
        Some((t.unix_timestamp_nanos() as f64 / 1e9, v))
    })
}

/// The builds a bench compares, from environment variable `var` ("label=/path,label=/path"):
/// this build alone when unset.
pub fn bins(var: &str) -> Vec<(String, String)> {
    match std::env::var(var) {
        Ok(v) => v
            .split(',')
            .map(|b| {
                let (label, path) = b
                    .split_once('=')
                    .unwrap_or_else(|| panic!("{var}: label=/path,..."));
                (label.to_string(), path.to_string())
            })
            .collect(),
        Err(_) => vec![("haproxy-acme".into(), BIN.into())],
    }
}

/// The median of `v` (NaN when empty): the benches' figure.
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}
