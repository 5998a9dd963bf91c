//! What `deploy/` ships is what we test: the unit file verifies, the compose stack's HAProxy
//! environment makes `deploy/haproxy.cfg` valid, and the image's health check and build command
//! are the ones this repository supports. (The e2e tests run HAProxy from deploy/haproxy.cfg.)

use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_haproxy-acme");

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(file)
}

fn read(file: &str) -> String {
    std::fs::read_to_string(deploy(file)).unwrap()
}

#[test]
fn systemd_unit_verifies() {
    let analyze = Command::new("systemd-analyze").arg("--version").output();
    assert!(
        analyze.is_ok_and(|o| o.status.success()),
        "systemd-analyze is needed to verify deploy/haproxy-acme.service: apt-get install systemd \
         (scripts/install-deps.sh does)"
    );
    // Verify the unit as shipped, with ExecStart pointing at the binary just built.
    let dir = tempfile::tempdir().unwrap();
    let unit = read("haproxy-acme.service").replace("/usr/local/bin/haproxy-acme", BIN);
    assert!(unit.contains(&format!("ExecStart={BIN} run")));
    let path = dir.path().join("haproxy-acme.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {err}");
    assert!(
        !err.contains("haproxy-acme.service:"),
        "warnings about the unit: {err}"
    );
    for hardening in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "StateDirectory=haproxy-acme",
        "CAP_NET_BIND_SERVICE",
    ] {
        assert!(
            read("haproxy-acme.service").contains(hardening),
            "{hardening}"
        );
    }
}

/// The unit raises the open-file limit well above the responder's connection cap, so a flood
/// that fills the cap leaves descriptors for the store, the runtime API and the CA.
#[test]
fn systemd_unit_raises_the_open_file_limit_above_the_responder_cap() {
    let unit = read("haproxy-acme.service");
    let limit: usize = unit
        .lines()
        .find_map(|l| l.trim().strip_prefix("LimitNOFILE="))
        .expect("deploy/haproxy-acme.service sets LimitNOFILE")
        .parse()
        .expect("LimitNOFILE is one number (soft = hard)");
    let cap = haproxy_acme::responder::MAX_CONNECTIONS;
    assert!(limit >= 4 * cap, "LimitNOFILE={limit} for a cap of {cap}");
}

/// The `environment:` entries of one service in deploy/docker-compose.yml.
fn compose_env(service: &str) -> Vec<(String, String)> {
    let compose = read("docker-compose.yml");
    let mut in_service = false;
    let mut in_env = false;
    let mut vars = Vec::new();
    for line in compose.lines() {
        let indent = line.len() - line.trim_start().len();
        let t = line.trim();
        if t.starts_with('#') {
            continue;
        }
        if indent == 2 && t.ends_with(':') {
            in_service = t == format!("{service}:");
            in_env = false;
        } else if in_service && indent == 4 {
            in_env = t == "environment:";
        } else if in_service && in_env && indent == 6 {
            let (k, v) = t.split_once(':').unwrap();
            let v = v.split(" #").next().unwrap().trim().trim_matches('"');
            vars.push((k.trim().to_string(), v.to_string()));
        }
    }
    assert!(
        !vars.is_empty(),
        "no environment for {service} in docker-compose.yml"
    );
    vars
}

/// The services of deploy/docker-compose.yml that mount the named volume `volume`.
fn compose_services_mounting(volume: &str) -> Vec<String> {
    let compose = read("docker-compose.yml");
    let mut service = None;
    let mut found = Vec::new();
    for line in compose.lines() {
        let indent = line.len() - line.trim_start().len();
        let t = line.trim();
        if indent == 0 {
            service = None;
        }
        if indent == 2 && t.ends_with(':') {
            service = Some(t.trim_end_matches(':').to_string());
        } else if let Some(s) = &service {
            if indent == 6 && t.starts_with(&format!("- {volume}:")) && !found.contains(s) {
                found.push(s.clone());
            }
        }
    }
    found
}

#[test]
fn compose_keeps_the_runtime_api_off_the_shared_network() {
    // The runtime API is admin level: whoever reaches it can replace any certificate. Only
    // HAProxy and haproxy-acme mount the volume its socket is on; the application does not,
    // and nothing binds it to TCP.
    assert_eq!(
        compose_services_mounting("haproxy-api"),
        ["haproxy", "haproxy-acme"]
    );
    let socket = compose_env("haproxy")
        .into_iter()
        .find(|(k, _)| k == "HAPROXY_RUNTIME_SOCKET")
        .unwrap()
        .1;
    assert!(socket.starts_with("/run/haproxy-api/"), "{socket}");
    assert!(!read("docker-compose.yml").contains("ipv4@"));
}

#[test]
fn compose_haproxy_environment_makes_the_shipped_config_valid() {
    let dir = tempfile::tempdir().unwrap();
    haproxy_acme::installer::Installer::new(dir.path().into(), dir.path().into(), None)
        .prepare_certs_dir()
        .unwrap();
    let mut env = compose_env("haproxy");
    for (k, v) in env.iter_mut() {
        match k.as_str() {
            // The volume's mount point, here a directory holding the daemon's default certificate.
            "CERTS_DIR" => *v = dir.path().display().to_string(),
            // The shared runtime-API volume's mount point.
            "HAPROXY_RUNTIME_SOCKET" => *v = dir.path().join("admin.sock").display().to_string(),
            // Service names resolve only on the compose network.
            "ACME_RESPONDER" | "APP_BACKEND" => {
                let port = v.rsplit(':').next().unwrap().to_string();
                *v = format!("127.0.0.1:{port}");
            }
            _ => {}
        }
    }
    let out = Command::new("haproxy")
        .args(["-c", "-f"])
        .arg(deploy("haproxy.cfg"))
        .envs(env.clone())
        .output()
        .expect("haproxy is installed (scripts/install-deps.sh)");
    assert!(
        out.status.success(),
        "haproxy -c with {env:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn compose_daemon_environment_is_a_valid_configuration() {
    let env = compose_env("haproxy-acme");
    let out = Command::new(BIN)
        .arg("check-config")
        .env_clear()
        .envs(env)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // The old stack's interface: OPTIONS=--staging, LOAD_BALANCER_SERVICE_NAME.
    assert_eq!(
        c["acme_directory"],
        "https://acme-staging-v02.api.letsencrypt.org/directory"
    );
    // The runtime API is reached through the socket on the volume only HAProxy and we mount,
    // not over the network the application shares.
    assert_eq!(c["haproxy_runtime_api"]["kind"], "unix");
    let socket = c["haproxy_runtime_api"]["address"].as_str().unwrap();
    let haproxy_socket = compose_env("haproxy")
        .into_iter()
        .find(|(k, _)| k == "HAPROXY_RUNTIME_SOCKET")
        .unwrap()
        .1;
    assert_eq!(socket, haproxy_socket);
    assert_eq!(c["certificates"].as_array().unwrap().len(), 2);
    // HAProxy forwards challenges to the port the daemon listens on.
    let responder = compose_env("haproxy")
        .into_iter()
        .find(|(k, _)| k == "ACME_RESPONDER")
        .unwrap()
        .1;
    assert_eq!(
        responder.rsplit(':').next(),
        c["responder_listen"].as_str().unwrap().rsplit(':').next()
    );
}

#[test]
fn dockerfile_builds_like_ci_and_checks_health_with_the_daemon() {
    let docker = read("Dockerfile");
    let ci = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/test.sh"))
        .unwrap();
    let build = "cargo build --release --locked --bin haproxy-acme";
    assert!(
        docker.contains(build) && ci.contains(build),
        "the image and CI build the same way"
    );
    assert!(
        docker.contains(r#"HEALTHCHECK"#)
            && docker.contains(r#"CMD ["haproxy-acme", "healthcheck"]"#)
    );
    assert!(
        docker.contains("USER haproxy-acme"),
        "the image runs as non-root"
    );
    let help = Command::new(BIN)
        .args(["healthcheck", "--help"])
        .output()
        .unwrap();
    assert!(help.status.success());
}
