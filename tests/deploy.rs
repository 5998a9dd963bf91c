//! What `deploy/` ships is what we test: the unit file verifies, the compose stack's HAProxy
//! environment makes `deploy/haproxy.cfg` valid, and the image's health check and build command
//! are the ones this repository supports; the Prometheus rules pass `promtool check rules` and
//! their unit tests, and they and the Grafana dashboard name only metrics `/metrics` exports.
//! (The e2e tests run HAProxy from deploy/haproxy.cfg.)

use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_haproxy-acme");

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(file)
}

/// The HAProxy to check with: `HAPROXY_BIN` (as in tests/common), else `haproxy` on `PATH`.
fn haproxy_bin() -> String {
    std::env::var("HAPROXY_BIN")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "haproxy".into())
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
            "ACME_RESPONDER" | "ACME_TLS_ALPN_RESPONDER" | "APP_BACKEND" => {
                let port = v.rsplit(':').next().unwrap().to_string();
                *v = format!("127.0.0.1:{port}");
            }
            _ => {}
        }
    }
    let out = Command::new(haproxy_bin())
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
    // Warning-free on every version we support (HAProxy 3.4 warns about the "master-worker"
    // keyword, deprecated since 3.3; -W on the command line replaces it).
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!said.contains("WARNING"), "haproxy -c warns: {said}");
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
    // And the TLS-ALPN-01 handshakes to the port its TLS-ALPN-01 responder listens on.
    let tls_alpn = compose_env("haproxy")
        .into_iter()
        .find(|(k, _)| k == "ACME_TLS_ALPN_RESPONDER")
        .unwrap()
        .1;
    assert_eq!(
        tls_alpn.rsplit(':').next(),
        c["tls_alpn_listen"].as_str().unwrap().rsplit(':').next()
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

/// The sample names the daemon's `/metrics` exports (a counter's `_total`, a histogram's
/// `_bucket`, `_sum` and `_count`), rendered by the code the endpoint runs, with a record that
/// has every per-certificate gauge and each counter counted once (an empty family is not
/// exported at all).
fn exported_metrics() -> std::collections::BTreeSet<String> {
    use haproxy_acme_state::{apply, CertMeta, Event, KeyType, Record};
    let now = 1_700_000_000;
    let r = Record::new(vec!["a.example.com".into()], KeyType::EcdsaP256, now);
    let r = apply(&r, Event::OrderCreated { url: "u".into() }, now);
    let meta = CertMeta {
        serial: "01".into(),
        not_before: now,
        not_after: now + 90 * 86_400,
        fingerprint: "f".into(),
        issued_at: now,
    };
    let r = apply(&r, Event::CertificateStored { meta }, now);
    let m = haproxy_acme::metrics::Metrics::default();
    m.watchdog_checked(1, now);
    m.acme_request("POST", "/order-plz", Some(201));
    m.issued(std::time::Duration::from_secs(1));
    m.installed(true);
    m.runtime_api_error();
    m.failure("order", "retryable");
    m.hook(true);
    m.alert_hook(false);
    m.drift();
    let text = m.render_records(
        &[r],
        now + 89 * 86_400,
        true,
        now,
        None,
        haproxy_acme::metrics::PerCertificate::All,
    );
    let mut names = std::collections::BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').unwrap();
        let suffixes: &[&str] = match kind {
            "counter" => &["_total", "_created"],
            "histogram" => &["_bucket", "_sum", "_count", "_created"],
            _ => &[""],
        };
        names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
    }
    assert!(
        names.contains("haproxy_acme_certificate_attention"),
        "{text}"
    );
    names
}

/// The `haproxy_acme_*` metric names an expression mentions.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("haproxy_acme_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// Every expression names at least one metric, and only metrics the daemon exports.
fn assert_real_metrics(file: &str, exprs: &[String]) {
    let exported = exported_metrics();
    assert!(!exprs.is_empty(), "{file}: no expression found");
    for expr in exprs {
        let names = metric_names(expr);
        assert!(
            !names.is_empty(),
            "{file}: `{expr}` names no haproxy_acme metric"
        );
        for n in names {
            assert!(
                exported.contains(&n),
                "{file}: `{expr}` names {n}, which /metrics does not export ({exported:?})"
            );
        }
    }
}

#[test]
fn prometheus_rules_pass_promtool_and_name_only_exported_metrics() {
    let version = Command::new("promtool").arg("--version").output();
    assert!(
        version.is_ok_and(|o| o.status.success()),
        "promtool checks deploy/prometheus-rules.yml: apt-get install prometheus \
         (scripts/install-deps.sh does)"
    );
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(deploy("prometheus-rules.yml"))
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && said.contains("SUCCESS"),
        "promtool check rules: {said}"
    );
    let out = Command::new("promtool")
        .args(["test", "rules", "prometheus-rules.test.yml"])
        .current_dir(deploy(""))
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && said.contains("SUCCESS"),
        "promtool test rules: {said}"
    );
    let exprs: Vec<String> = read("prometheus-rules.yml")
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr:"))
        .map(|e| e.trim().to_string())
        .collect();
    assert_eq!(exprs.len(), 10, "one expression per rule");
    assert_real_metrics("prometheus-rules.yml", &exprs);
    // The unit tests feed series under the names the daemon exports, too.
    let series: Vec<String> = read("prometheus-rules.test.yml")
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- series:"))
        .map(|e| e.trim().to_string())
        .collect();
    assert_real_metrics("prometheus-rules.test.yml", &series);
}

#[test]
fn grafana_dashboard_is_valid_json_and_names_only_exported_metrics() {
    let dash: serde_json::Value = serde_json::from_str(&read("grafana-dashboard.json"))
        .expect("deploy/grafana-dashboard.json is valid JSON");
    assert_eq!(dash["title"], "haproxy-acme");
    let panels = dash["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10);
    let mut exprs = Vec::new();
    let mut ids = std::collections::BTreeSet::new();
    for p in panels {
        let title = p["title"].as_str().expect("every panel has a title");
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "{title}: duplicate id"
        );
        assert!(p["gridPos"]["w"].as_u64().is_some(), "{title}: no gridPos");
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            let expr = t["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("{title}: a target without expr"));
            assert!(
                expr.contains("$instance"),
                "{title}: `{expr}` ignores the instance selector"
            );
            exprs.push(expr.to_string());
        }
    }
    for v in dash["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["definition"].as_str() {
            exprs.push(q.to_string());
        }
    }
    assert_real_metrics("grafana-dashboard.json", &exprs);
    let all = exprs.join("\n");
    for shown in [
        "haproxy_acme_certificate_attention",
        "haproxy_acme_certificate_expiration_timestamp_seconds",
        "haproxy_acme_certificate_drifts_total",
        "haproxy_acme_watchdog_last_check_timestamp_seconds",
    ] {
        assert!(all.contains(shown), "the dashboard shows {shown}");
    }
}
