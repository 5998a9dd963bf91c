//! The compose stack run for real: `docker-compose up` of `deploy/docker-compose.yml` on the
//! machine's Docker engine, with images built here from Debian's packages
//! (`scripts/docker-images.sh`: stand-ins for `debian:bookworm-slim`, `haproxy:3.2` and
//! `nginx:stable`, and pebble), and haproxy-acme's image built from `deploy/Dockerfile`'s runtime
//! stage, unchanged, around the release binary compiled on the host. A test override
//! (`tests/compose/override.yml`) changes only image names and the CA: pebble in its own container
//! behind a stand-in for Let's Encrypt's staging host (so `OPTIONS=--staging` is taken as users
//! write it), and the shipped DOMAINS resolving to the HAProxy container on the compose network.
//!
//! One test walks the life of the compose service: first start (HAProxy after haproxy-acme is
//! healthy, the default certificate at once, certificates through port 80 served on 443 with no
//! reload), restarts of either service, `down` + `up`, `kill -9` of either main process under
//! `restart: unless-stopped`, a new image rolled in, a DOMAINS change, and the runtime API out of
//! the application's reach. Needs root (HAProxy's published ports 80 and 443 on the host, as
//! shipped; the volumes are read from the host).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// The shipped DOMAINS (deploy/docker-compose.yml), then the one added by the DOMAINS change.
const IDS: [&str; 2] = ["example.com", "shop.example.com"];
const ADDED: &str = "blog.example.com";
const STAGING_HOST: &str = "acme-staging-v02.api.letsencrypt.org";
/// On every image the test builds (the build stage's too), so that it removes them all.
const TEST_LABEL: &str = "org.haproxy-acme.test=compose";

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?} could not start: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A compose project: the shipped file, the test override and any further override files.
struct Stack {
    dir: tempfile::TempDir,
    project: String,
    overrides: Vec<PathBuf>,
    /// Pebble's log lines of containers already removed (`down` forgets them).
    pebble_log_before: String,
}

impl Stack {
    fn compose(&self) -> Command {
        let mut cmd = Command::new("docker-compose");
        cmd.arg("--project-name")
            .arg(&self.project)
            .arg("--file")
            .arg(Path::new(ROOT).join("deploy/docker-compose.yml"));
        for o in &self.overrides {
            cmd.arg("--file").arg(o);
        }
        cmd.env("COMPOSE_TEST_DIR", self.dir.path());
        cmd
    }

    fn compose_run(&self, args: &[&str]) -> String {
        text(&run(self.compose().args(args)))
    }

    fn container(&self, service: &str) -> String {
        let id = self.compose_run(&["ps", "-q", service]);
        let id = id.trim();
        assert!(!id.is_empty(), "no container for service {service}");
        id.to_string()
    }

    fn inspect(&self, service: &str, format: &str) -> String {
        let id = self.container(service);
        text(&run(
            Command::new("docker").args(["inspect", "-f", format, &id])
        ))
        .trim()
        .to_string()
    }

    fn pebble_log(&self) -> String {
        let now = text(&run(self.compose().args(["logs", "--no-color", "pebble"])));
        format!("{}{now}", self.pebble_log_before)
    }

    /// Certificates pebble issued, and orders it was sent, over the whole test.
    fn pebble_counts(&self) -> (usize, usize) {
        let log = self.pebble_log();
        let issued = log.matches("Issued certificate serial").count();
        let orders = log.matches("POST /order-plz").count();
        (issued, orders)
    }

    fn down(&mut self, volumes: bool) {
        self.pebble_log_before = self.pebble_log();
        let mut args = vec!["down", "--timeout", "10"];
        if volumes {
            args.push("--volumes");
        }
        self.compose_run(&args);
    }

    /// Waits until `service`'s container is running, and healthy if it has a health check.
    fn wait_ready(&self, service: &str, within: Duration) {
        let started = Instant::now();
        loop {
            let state = self.inspect(
                service,
                "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}",
            );
            if state == "running healthy" || state == "running" {
                return;
            }
            assert!(
                started.elapsed() < within,
                "{service} not ready after {within:?}: {state}\n{}",
                self.compose_run(&["logs", "--no-color", "--tail", "60"])
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `haproxy-acme status` through `docker-compose exec`, as a user runs it.
    fn status(&self) -> String {
        self.compose_run(&["exec", "-T", "haproxy-acme", "haproxy-acme", "status"])
    }

    /// The serials the daemon's store holds, per certificate id (`state dump` in the container).
    fn stored(&self) -> BTreeMap<String, (String, bool)> {
        let out = self.compose_run(&[
            "exec",
            "-T",
            "haproxy-acme",
            "haproxy-acme",
            "state",
            "dump",
        ]);
        let dump: serde_json::Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("state dump is not JSON ({e}): {out}"));
        dump["certificates"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| {
                let serial = c["serial"].as_str()?.trim_start_matches('0').to_uppercase();
                Some((
                    c["id"].as_str().unwrap().to_string(),
                    (serial, c["installed"] == true),
                ))
            })
            .collect()
    }

    /// HAProxy's log lines saying a worker started, over the container's life: one per start
    /// of the container, none per reload (the master logs "Reloading HAProxy" before another).
    /// The shipped 3.2 says "Initializing new worker (PID)", 2.6 "New worker (PID) forked"
    /// (both seen with -W and SIGUSR2; 3.2 no longer has 2.6's "Reexecuting Master process"):
    /// either is counted, so a compose file pinned to an older HAProxy is checked as well.
    fn haproxy_workers_started(&self) -> usize {
        let log = text(&run(self.compose().args(["logs", "--no-color", "haproxy"])));
        assert!(
            !log.contains("Reloading HAProxy"),
            "HAProxy reloaded:\n{log}"
        );
        log.matches("Initializing new worker (").count() + log.matches("New worker (").count()
    }

    fn dump_logs(&self) -> String {
        self.compose()
            .args(["logs", "--no-color", "--tail", "80"])
            .output()
            .map(|o| text(&o))
            .unwrap_or_default()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("compose logs:\n{}", self.dump_logs());
        }
        let _ = self
            .compose()
            .args(["down", "--volumes", "--timeout", "5"])
            .output();
        let filter = format!("label={TEST_LABEL}");
        if let Ok(out) = Command::new("docker")
            .args(["image", "ls", "--quiet", "--filter", &filter])
            .output()
        {
            let ids: Vec<String> = text(&out).split_whitespace().map(String::from).collect();
            if !ids.is_empty() {
                let _ = Command::new("docker")
                    .args(["image", "rm", "--force"])
                    .args(&ids)
                    .output();
            }
        }
    }
}

/// The certificate HAProxy serves for `name` on the host's port 443, as (serial, issuer); `None`
/// while no TLS handshake succeeds.
fn served(name: &str) -> Option<(String, String)> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:443 -servername {name} </dev/null 2>/dev/null \
             | openssl x509 -noout -serial -issuer"
        ))
        .output()
        .ok()?;
    let t = text(&out);
    let serial = t.lines().find_map(|l| l.strip_prefix("serial="))?;
    let issuer = t.lines().find_map(|l| l.strip_prefix("issuer="))?;
    Some((
        serial.trim().trim_start_matches('0').to_uppercase(),
        issuer.trim().to_string(),
    ))
}

/// Waits until every id in `ids` is served with the certificate the store holds, installed;
/// returns the serials.
fn wait_served(stack: &Stack, ids: &[&str], within: Duration) -> BTreeMap<String, String> {
    let started = Instant::now();
    loop {
        let stored = stack.stored();
        let mut serials = BTreeMap::new();
        for id in ids {
            if let (Some((serial, true)), Some((served, _))) = (stored.get(*id), served(id)) {
                if *serial == served {
                    serials.insert(id.to_string(), served);
                }
            }
        }
        if serials.len() == ids.len() {
            return serials;
        }
        assert!(
            started.elapsed() < within,
            "not every one of {ids:?} served as stored after {within:?}: stored {stored:?}\n{}",
            stack.dump_logs()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The serials served right now (no waiting beyond HAProxy's first answer).
fn served_now(ids: &[&str], within: Duration) -> BTreeMap<String, String> {
    let started = Instant::now();
    let mut out = BTreeMap::new();
    for id in ids {
        loop {
            if let Some((serial, _)) = served(id) {
                out.insert(id.to_string(), serial);
                break;
            }
            assert!(
                started.elapsed() < within,
                "HAProxy did not answer TLS for {id}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    out
}

/// Builds haproxy-acme's image: deploy/Dockerfile's runtime stage, unchanged, with the build
/// stage replaced by the release binary compiled on the host. `rev` makes a distinct image (a
/// new release rolled in).
fn build_daemon_image(dir: &Path, tag: &str, rev: &str) {
    let binary = Path::new(ROOT).join("target/release/haproxy-acme");
    assert!(
        binary.exists(),
        "{} is missing: build it first with `cargo build --release --locked --bin haproxy-acme` \
         (scripts/test.sh does)",
        binary.display()
    );
    let dockerfile = std::fs::read_to_string(Path::new(ROOT).join("deploy/Dockerfile")).unwrap();
    let runtime = &dockerfile[dockerfile
        .find("\nFROM debian:bookworm-slim AS runtime")
        .expect("deploy/Dockerfile has a `FROM debian:bookworm-slim AS runtime` stage")..];
    let ctx = dir.join(format!("ctx-{rev}"));
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::copy(&binary, ctx.join("haproxy-acme")).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM scratch AS build\nCOPY haproxy-acme /src/target/release/haproxy-acme\n\
             LABEL {TEST_LABEL}\n{runtime}\nLABEL {TEST_LABEL} org.haproxy-acme.test-revision={rev}\n"
        ),
    )
    .unwrap();
    run(Command::new("docker")
        .args(["build", "--quiet", "--tag", tag])
        .arg(&ctx));
}

/// The CA the daemon is told to trust (ACME_CA_BUNDLE) and the staging host's certificate.
fn make_staging_certificate(dir: &Path) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "compose test staging CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec![STAGING_HOST.into(), "pebble".into()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("pebble-cert.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.join("pebble-key.pem"), key.serialize_pem()).unwrap();
    std::fs::write(
        dir.join("staging.pem"),
        format!("{}{}", leaf.pem(), key.serialize_pem()),
    )
    .unwrap();
    // Read by pebble, the front and the daemon (uid 99): test material, no secret.
    for f in ["ca.pem", "pebble-cert.pem", "pebble-key.pem", "staging.pem"] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
}

fn write_override(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    path
}

#[test]
fn the_compose_stack_lives_through_restarts_upgrades_and_changes() {
    for tool in ["docker", "docker-compose", "openssl"] {
        assert!(
            Command::new(tool).arg("--version").output().is_ok(),
            "{tool} is missing: scripts/install-deps.sh installs it"
        );
    }
    run(Command::new("bash").arg(Path::new(ROOT).join("scripts/docker-images.sh")));

    let dir = tempfile::tempdir().unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let tag = |rev: &str| format!("haproxy-acme:compose-test-{}-{rev}", std::process::id());
    build_daemon_image(dir.path(), &tag("a"), "a");
    make_staging_certificate(dir.path());
    std::fs::copy(
        Path::new(ROOT).join("tests/compose/pebble.json"),
        dir.path().join("pebble.json"),
    )
    .unwrap();
    std::fs::copy(
        Path::new(ROOT).join("tests/compose/staging-front.cfg"),
        dir.path().join("staging-front.cfg"),
    )
    .unwrap();
    let image_override = |dir: &Path, rev: &str| {
        write_override(
            dir,
            &format!("image-{rev}.yml"),
            &format!("services:\n  haproxy-acme:\n    image: {}\n", tag(rev)),
        )
    };
    let mut stack = Stack {
        project: format!("hacompose{}", std::process::id()),
        overrides: vec![
            Path::new(ROOT).join("tests/compose/override.yml"),
            image_override(dir.path(), "a"),
        ],
        pebble_log_before: String::new(),
        dir,
    };

    // 1. First start.
    let up = Instant::now();
    stack.compose_run(&["up", "--detach", "--no-build"]);
    stack.wait_ready("haproxy", Duration::from_secs(120));
    // TLS from HAProxy's first answer on: the default certificate haproxy-acme wrote before
    // HAProxy started (for a name it has no certificate for; the ids themselves are issued
    // within a fraction of a second of HAProxy's runtime API answering).
    let (_, default_issuer) = served_now(&["unknown.example.com"], Duration::from_secs(10))
        .into_values()
        .next()
        .map(|serial| (serial, served("unknown.example.com").unwrap().1))
        .unwrap();
    let haproxy_up = up.elapsed();
    assert!(
        !default_issuer.contains("Pebble"),
        "the default certificate is issued by {default_issuer}"
    );
    // HAProxy started only once haproxy-acme was healthy.
    let healthy_at = stack.inspect(
        "haproxy-acme",
        "{{range .State.Health.Log}}{{if eq .ExitCode 0}}{{.End}}\n{{end}}{{end}}",
    );
    let first_healthy = healthy_at.lines().next().unwrap_or("").to_string();
    let haproxy_started = stack.inspect("haproxy", "{{.State.StartedAt}}");
    assert!(
        !first_healthy.is_empty() && first_healthy[..19] <= haproxy_started[..19],
        "HAProxy started at {haproxy_started}, haproxy-acme first healthy at {first_healthy:?}"
    );
    let serials = wait_served(&stack, &IDS, Duration::from_secs(120));
    let all_served = up.elapsed();
    for id in serials.keys() {
        let (_, issuer) = served(id).unwrap();
        assert!(issuer.contains("Pebble"), "{id} served by {issuer}");
    }
    let status = stack.status();
    eprintln!("COMPOSE: docker-compose exec haproxy-acme haproxy-acme status:\n{status}");
    for id in IDS {
        assert!(status.contains(id), "status does not show {id}:\n{status}");
    }
    assert_eq!(stack.haproxy_workers_started(), 1, "HAProxy reloaded");
    let (issued, orders) = stack.pebble_counts();
    assert_eq!(issued, IDS.len(), "certificates issued on first start");
    eprintln!(
        "COMPOSE: up -> HAProxy serving the default certificate {} ms, every certificate \
         served {} ms; {orders} orders",
        haproxy_up.as_millis(),
        all_served.as_millis()
    );

    let unchanged = |stack: &Stack, what: &str| {
        let now = wait_served(stack, &IDS, Duration::from_secs(60));
        assert_eq!(now, serials, "{what}: other certificates served");
        assert_eq!(
            stack.pebble_counts(),
            (issued, orders),
            "{what}: pebble was asked for a new order or certificate"
        );
    };

    // 2. Restarting haproxy-acme orders nothing.
    stack.compose_run(&["restart", "haproxy-acme"]);
    stack.wait_ready("haproxy-acme", Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(3));
    unchanged(&stack, "restart haproxy-acme");

    // 3. Restarting HAProxy serves the certificates from the volume at once.
    stack.compose_run(&["restart", "haproxy"]);
    assert_eq!(served_now(&IDS, Duration::from_secs(30)), serials);
    unchanged(&stack, "restart haproxy");

    // 4. down + up (volumes kept): same certificates, at once, nothing ordered (the pebble
    // container is new and knows nothing: an order would show in its log).
    stack.down(false);
    stack.compose_run(&["up", "--detach", "--no-build"]);
    stack.wait_ready("haproxy", Duration::from_secs(120));
    assert_eq!(served_now(&IDS, Duration::from_secs(30)), serials);
    std::thread::sleep(Duration::from_secs(3));
    unchanged(&stack, "down + up");

    // 5. kill -9 of either main process: restart: unless-stopped brings it back.
    for service in ["haproxy-acme", "haproxy"] {
        let restarts: u32 = stack.inspect(service, "{{.RestartCount}}").parse().unwrap();
        let pid = stack.inspect(service, "{{.State.Pid}}");
        run(Command::new("kill").args(["-9", &pid]));
        let started = Instant::now();
        loop {
            let now: u32 = stack.inspect(service, "{{.RestartCount}}").parse().unwrap();
            if now > restarts {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{service} was not restarted after kill -9"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        stack.wait_ready(service, Duration::from_secs(60));
        unchanged(&stack, &format!("kill -9 {service}"));
    }

    // 6. A new image rolled in with `up -d`: the state is carried by the volume, HAProxy is
    // left running. The new container comes back with another address: here the old one is
    // stopped first and a one-off container (`docker compose run`) takes its address, which
    // Docker otherwise hands to the new container; HAProxy must find haproxy-acme again for
    // the validations of step 7.
    build_daemon_image(stack.dir.path(), &tag("b"), "b");
    stack.overrides[1] = image_override(stack.dir.path(), "b");
    let before = stack.container("haproxy-acme");
    let haproxy_before = stack.container("haproxy");
    let ip = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}";
    let ip_before = stack.inspect("haproxy-acme", ip);
    stack.compose_run(&["stop", "haproxy-acme"]);
    stack.compose_run(&[
        "run",
        "--detach",
        "--rm",
        "--no-deps",
        "--entrypoint",
        "sleep",
        "app",
        "600",
    ]);
    stack.compose_run(&["up", "--detach", "--no-build"]);
    stack.wait_ready("haproxy-acme", Duration::from_secs(60));
    let ip_after = stack.inspect("haproxy-acme", ip);
    eprintln!("COMPOSE: new image: haproxy-acme's address {ip_before} -> {ip_after}");
    assert_ne!(
        ip_after, ip_before,
        "the address did not change: the step tests less"
    );
    assert_eq!(
        stack.container("haproxy"),
        haproxy_before,
        "HAProxy recreated"
    );
    assert_ne!(stack.container("haproxy-acme"), before, "not recreated");
    assert!(
        stack
            .inspect("haproxy-acme", "{{.Config.Image}}")
            .ends_with("-b"),
        "the new image does not run"
    );
    std::thread::sleep(Duration::from_secs(3));
    unchanged(&stack, "new image");

    // 7. A DOMAINS change applied with `up -d`: the new certificate is issued and served, the
    // others are not ordered again.
    let workers = stack.haproxy_workers_started();
    let domains = format!("example.com,www.example.com;shop.example.com;{ADDED}");
    stack.overrides.push(write_override(
        stack.dir.path(),
        "domains.yml",
        &format!("services:\n  haproxy-acme:\n    environment:\n      DOMAINS: \"{domains}\"\n"),
    ));
    stack.compose_run(&["up", "--detach", "--no-build"]);
    let mut ids = IDS.to_vec();
    ids.push(ADDED);
    let after = wait_served(&stack, &ids, Duration::from_secs(120));
    for id in IDS {
        assert_eq!(
            after[id], serials[id],
            "{id} changed with the DOMAINS change"
        );
    }
    assert_eq!(stack.pebble_counts().0, issued + 1, "one certificate more");
    assert_eq!(stack.haproxy_workers_started(), workers, "HAProxy reloaded");

    // 8. The runtime API is out of the application's reach: no socket in its filesystem, and
    // HAProxy listens on the network on 80 and 443 only (its runtime API is not a TCP port).
    stack.compose_run(&[
        "exec",
        "-T",
        "app",
        "sh",
        "-c",
        "test ! -e /run/haproxy-api/admin.sock && test ! -e /run/haproxy-api",
    ]);
    let tcp = stack.compose_run(&[
        "exec",
        "-T",
        "haproxy",
        "cat",
        "/proc/net/tcp",
        "/proc/net/tcp6",
    ]);
    let mut listening: Vec<u16> = tcp
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (addr, port) = f.get(1)?.split_once(':')?;
            // Loopback sockets of the container's namespace (Docker's embedded DNS listens on
            // 127.0.0.11) are out of other containers' reach.
            let loopback = addr.ends_with("7F") || addr == "00000000000000000000000001000000";
            (f.get(3) == Some(&"0A") && !loopback)
                .then(|| u16::from_str_radix(port, 16).ok())
                .flatten()
        })
        .collect();
    listening.sort();
    listening.dedup();
    assert_eq!(
        listening,
        vec![80, 443],
        "HAProxy listens on more than 80 and 443"
    );

    stack.down(true);
}
