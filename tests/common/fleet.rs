//! A fleet on loopback: one pebble (the [`Env`]'s), one private PostgreSQL, and N nodes, each an
//! HAProxy from `deploy/haproxy.cfg` on its own address (127.0.0.2, .3, ...; HTTP on the port
//! pebble validates on, so the DNS answer decides which node a validation lands on) with an
//! instance of the daemon beside it.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use super::pg::Postgres;
use super::{haproxy_env, spawn_haproxy, unix_command, wait_until, Daemon, Env, Options, Proc};

pub struct Node {
    pub name: String,
    /// The node's address: its HAProxy's HTTP port listens there.
    pub ip: String,
    pub https_port: u16,
    pub responder_port: u16,
    pub tls_alpn_port: u16,
    pub certs_dir: PathBuf,
    pub data_dir: PathBuf,
    pub runtime_sock: PathBuf,
    pub master_sock: PathBuf,
    hap_env: Vec<(String, String)>,
    haproxy: Option<Proc>,
    pub daemon: Option<Daemon>,
    dir: PathBuf,
}

pub struct Fleet {
    pub env: Env,
    pub pg: Postgres,
    pub key_file: PathBuf,
    pub nodes: Vec<Node>,
    /// LEASE_TIME of every instance.
    pub lease: Duration,
}

impl Fleet {
    /// pebble (with `opts`), PostgreSQL and `n` nodes' HAProxies; no daemon yet.
    pub fn start(n: usize, opts: Options, lease: Duration) -> Fleet {
        let env = Env::start_opts(opts);
        let pg = Postgres::start();
        let key_file = env.dir.path().join("store.key");
        std::fs::write(&key_file, format!("{}\n", "5a".repeat(32))).unwrap();
        std::fs::set_permissions(
            &key_file,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let mut nodes = Vec::new();
        for i in 0..n {
            let name = format!("node-{}", i + 1);
            let ip = format!("127.0.0.{}", i + 2);
            let dir = env.dir.path().join(&name);
            std::fs::create_dir_all(dir.join("certs")).unwrap();
            let (https_port, responder_port, tls_alpn_port) =
                (super::free_port(), super::free_port(), super::free_port());
            let runtime_sock = dir.join("haproxy-admin.sock");
            let mut hap_env = haproxy_env(
                [env.http_port, https_port, responder_port, tls_alpn_port],
                None,
                &dir.join("certs"),
                &runtime_sock,
            );
            for (k, v) in &mut hap_env {
                if k == "HAPROXY_HTTP_BIND" {
                    *v = format!("{ip}:{}", env.http_port);
                }
            }
            nodes.push(Node {
                name,
                ip,
                https_port,
                responder_port,
                tls_alpn_port,
                certs_dir: dir.join("certs"),
                data_dir: dir.join("data"),
                master_sock: dir.join("haproxy-master.sock"),
                runtime_sock,
                hap_env,
                haproxy: None,
                daemon: None,
                dir,
            });
        }
        let mut fleet = Fleet {
            env,
            pg,
            key_file,
            nodes,
            lease,
        };
        for i in 0..n {
            fleet.start_haproxy(i);
        }
        fleet
    }

    /// Starts node `i`'s HAProxy (again) and waits for its runtime API.
    pub fn start_haproxy(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        assert!(
            node.haproxy.is_none(),
            "{}'s HAProxy already runs",
            node.name
        );
        let _ = std::fs::remove_file(&node.runtime_sock);
        let _ = std::fs::remove_file(&node.master_sock);
        // HAProxy needs a certificate to start: the daemon's self-signed default.
        haproxy_acme::installer::Installer::new(
            node.certs_dir.clone(),
            node.certs_dir.clone(),
            None,
        )
        .prepare_certs_dir()
        .unwrap();
        node.haproxy = Some(spawn_haproxy(&node.dir, &node.master_sock, &node.hap_env));
        let (sock, log) = (node.runtime_sock.clone(), node.dir.join("haproxy.log"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !unix_command(&sock, "show info").contains("Name: HAProxy") {
            assert!(
                Instant::now() < deadline,
                "{}'s HAProxy not ready after 30 s; its log:\n{}",
                node.name,
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills node `i`'s HAProxy (SIGKILL, master and workers).
    pub fn kill_haproxy(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        drop(node.haproxy.take().expect("HAProxy running"));
        let sock = node.runtime_sock.clone();
        wait_until("a node's HAProxy gone", Duration::from_secs(30), || {
            std::os::unix::net::UnixStream::connect(&sock).is_err()
        });
    }

    /// The environment of node `i`'s instance.
    pub fn daemon_env(&self, i: usize, domains: &str) -> Vec<(String, String)> {
        let node = &self.nodes[i];
        let mut env = self.env.daemon_env(domains);
        let set = |env: &mut Vec<(String, String)>, k: &str, v: String| {
            env.retain(|(key, _)| key != k);
            env.push((k.to_string(), v));
        };
        set(&mut env, "DATA_DIR", node.data_dir.display().to_string());
        set(&mut env, "CERTS_DIR", node.certs_dir.display().to_string());
        set(
            &mut env,
            "HAPROXY_RUNTIME_API",
            format!("unix:{}", node.runtime_sock.display()),
        );
        set(
            &mut env,
            "RESPONDER_LISTEN",
            format!("127.0.0.1:{}", node.responder_port),
        );
        set(
            &mut env,
            "PREFLIGHT_HTTP_ADDRESS",
            format!("{}:{}", node.ip, self.env.http_port),
        );
        set(
            &mut env,
            "PREFLIGHT_TLS_ADDRESS",
            format!("127.0.0.1:{}", node.https_port),
        );
        set(
            &mut env,
            "TLS_ALPN_LISTEN",
            format!("127.0.0.1:{}", node.tls_alpn_port),
        );
        set(&mut env, "POSTGRES_URL", self.pg.url());
        set(
            &mut env,
            "STORE_KEY_FILE",
            self.key_file.display().to_string(),
        );
        set(&mut env, "NODE_NAME", node.name.clone());
        set(
            &mut env,
            "LEASE_TIME",
            format!("{}ms", self.lease.as_millis()),
        );
        env
    }

    /// Starts node `i`'s instance for `domains` (its log: `<node>/daemon-N.log`).
    pub fn start_daemon(&mut self, i: usize, domains: &str) {
        self.start_daemon_with(i, domains, &[]);
    }

    pub fn start_daemon_with(&mut self, i: usize, domains: &str, overrides: &[(&str, &str)]) {
        let env = self.daemon_env(i, domains);
        let node = &mut self.nodes[i];
        assert!(
            node.daemon.is_none(),
            "{}'s instance already runs",
            node.name
        );
        node.daemon = Some(super::spawn_daemon(&node.dir, env, overrides));
    }

    /// SIGKILL of node `i`'s instance.
    pub fn kill_daemon(&mut self, i: usize) {
        self.nodes[i]
            .daemon
            .take()
            .expect("instance running")
            .kill();
    }

    /// `haproxy-acme ARGS` with node `i`'s environment (its admin socket: its instance).
    pub fn cli(&self, i: usize, domains: &str, args: &[&str]) -> std::process::Output {
        super::cli_in(self.daemon_env(i, domains), &[], args)
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`) to node `i`'s instance.
    pub fn freeze(&self, i: usize, frozen: bool) {
        let pid = self.nodes[i]
            .daemon
            .as_ref()
            .expect("instance running")
            .pid();
        let sig = if frozen { "-STOP" } else { "-CONT" };
        let st = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap();
        assert!(st.success(), "kill {sig} {pid}");
    }

    /// Makes pebble's DNS answer `ips` for `host` (in this order: pebble validates at the first).
    pub fn dns_a(&self, host: &str, ips: &[&str]) {
        // add-a adds to what challtestsrv answers: clear it first.
        let host = format!("{host}.");
        self.env
            .challtestsrv("clear-a", &serde_json::json!({ "host": host }));
        self.env.challtestsrv(
            "add-a",
            &serde_json::json!({ "host": host, "addresses": ips }),
        );
    }

    /// The serial (upper-case hex) node `i`'s HAProxy serves for `name`.
    pub fn served_serial(&self, i: usize, name: &str) -> Option<String> {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "openssl s_client -connect 127.0.0.1:{} -servername {name} </dev/null 2>/dev/null \
                 | openssl x509 -noout -serial",
                self.nodes[i].https_port
            ))
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .strip_prefix("serial=")
            .map(|s| s.trim_start_matches('0').to_uppercase())
    }

    /// The serial the store holds for certificate `id` (None: none yet).
    pub fn stored_serial(&self, id: &str) -> Option<String> {
        let out = self.pg.try_psql(&format!(
            "SELECT body::json->'cert'->>'serial' FROM haproxy_acme.records WHERE id = '{id}'"
        ));
        out.ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .map(|s| s.trim_start_matches('0').to_uppercase())
    }

    /// Whether every running node's HAProxy serves the stored certificate of every id.
    pub fn all_served(&self, ids: &[&str]) -> bool {
        self.served_but(ids, None)
    }

    /// [`all_served`](Self::all_served) on every node but `skip` (one whose instance is frozen).
    pub fn served_but(&self, ids: &[&str], skip: Option<usize>) -> bool {
        ids.iter().all(|id| {
            let Some(stored) = self.stored_serial(id) else {
                return false;
            };
            (0..self.nodes.len())
                .filter(|i| self.nodes[*i].haproxy.is_some() && Some(*i) != skip)
                .all(|i| self.served_serial(i, id).as_ref() == Some(&stored))
        })
    }

    /// The lease row: (holder, epoch), as stored.
    pub fn lease_holder(&self) -> (Option<String>, i64) {
        let out = self
            .pg
            .psql("SELECT coalesce(holder, ''), epoch FROM haproxy_acme.lease");
        let (holder, epoch) = out.trim().split_once('|').expect("holder|epoch");
        (
            Some(holder.to_string()).filter(|h| !h.is_empty()),
            epoch.parse().unwrap(),
        )
    }

    /// The index of the node whose instance holds a live lease, waiting up to `timeout`.
    pub fn wait_leader(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let live = self
                .pg
                .try_psql("SELECT holder FROM haproxy_acme.lease WHERE expires_at > now()");
            if let Ok(holder) = live {
                let holder = holder.trim();
                if let Some(i) = self.nodes.iter().position(|n| n.name == holder) {
                    if self.nodes[i].daemon.is_some() {
                        return i;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "no running instance leads after {timeout:?}; logs:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The HAProxy reload count of node `i` (its master CLI).
    pub fn reloads(&self, i: usize) -> u32 {
        let out = unix_command(&self.nodes[i].master_sock, "show proc");
        let line = out
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some("master"))
            .unwrap_or_else(|| panic!("no master line in show proc: {out}"));
        line.split_whitespace().nth(2).unwrap().parse().unwrap()
    }

    /// Waits until `ok`, up to `timeout`; the instances' logs in the panic message otherwise.
    pub fn wait(&self, what: &str, timeout: Duration, mut ok: impl FnMut(&Fleet) -> bool) {
        let deadline = Instant::now() + timeout;
        while !ok(self) {
            assert!(
                Instant::now() < deadline,
                "{what}: not so after {timeout:?}; logs:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The ends of every instance's logs, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for n in &self.nodes {
            let Ok(entries) = std::fs::read_dir(&n.dir) else {
                continue;
            };
            let mut logs: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "log"))
                .collect();
            logs.sort();
            for l in logs {
                let text = std::fs::read_to_string(&l).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                s.push_str(&format!("--- {} ---\n", l.display()));
                for line in tail.into_iter().rev() {
                    s.push_str(line);
                    s.push('\n');
                }
            }
        }
        s
    }
}
