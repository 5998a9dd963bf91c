//! A real BIND 9 (`named`, Debian's `bind9`) for the RFC 2136 tests: started in the foreground
//! (`-g`) with its own configuration in a temporary directory, on a free loopback port (UDP and
//! TCP), authoritative for the zones given, each taking dynamic updates signed with one TSIG
//! key (`allow-update { key ... }`). It also resolves for pebble, as a CA's resolver does
//! (recursion on, for loopback only): BIND follows a CNAME into another zone only when it
//! recurses, and the CNAME-delegated `_acme-challenge` needs that. The root zone is local, so
//! nothing is ever asked outside. Killed on drop. A missing `named` fails the test with the
//! command that installs it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{free_port, wait_until, Proc};

/// The TSIG key's name and algorithm BIND accepts updates with.
pub const KEY_NAME: &str = "acme-update-key";
pub const ALGORITHM: &str = "hmac-sha256";
/// Its secret (base64, as `tsig-keygen` prints it; 32 random-looking bytes).
pub const SECRET: &str = "9Tq8u2Yb0d3wXv1Lr6mKcPz4sHfJgN7eQaUiBoC5tRE=";

pub struct Bind {
    pub port: u16,
    pub dir: tempfile::TempDir,
    /// The first zone (asked for its SOA to know BIND is up).
    first: String,
    proc: Option<Proc>,
    conf: PathBuf,
}

/// `named`: `NAMED_BIN`, else /usr/sbin/named (Debian's path, not on a user's PATH).
fn named_bin() -> String {
    std::env::var("NAMED_BIN")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "/usr/sbin/named".into())
}

impl Bind {
    /// Starts BIND authoritative for `zones`: (zone, records after its SOA, in zone-file
    /// syntax, relative names in the zone), on 127.0.0.1.
    pub fn start(zones: &[(&str, &str)]) -> Bind {
        let named = named_bin();
        assert!(
            Path::new(&named).exists() || which(&named),
            "the RFC 2136 tests need BIND 9's `named` ({named}; NAMED_BIN names another): run \
             `bash scripts/install-deps.sh` (it installs Debian's bind9)"
        );
        let dir = tempfile::Builder::new()
            .prefix("haproxy-acme-bind")
            .tempdir()
            .unwrap();
        let d = dir.path();
        let port = free_port();
        let mut conf = String::new();
        conf.push_str(&format!(
            r#"options {{
    directory "{d}";
    pid-file "{d}/named.pid";
    session-keyfile "{d}/session.key";
    managed-keys-directory "{d}";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion yes;
    allow-recursion {{ 127.0.0.0/8; }};
    allow-query {{ any; }};
    dnssec-validation no;
    notify no;
}};
controls {{ }};
key "{KEY_NAME}" {{ algorithm {ALGORITHM}; secret "{SECRET}"; }};
zone "." {{ type primary; file "{d}/root.zone"; }};
"#,
            d = d.display(),
        ));
        for (zone, records) in zones {
            let file = d.join(format!("{zone}.zone"));
            std::fs::write(
                &file,
                format!(
                    "$ORIGIN {zone}.\n$TTL 60\n@ SOA ns1.{zone}. hostmaster.{zone}. 1 60 60 600 \
                     60\n{records}\n"
                ),
            )
            .unwrap();
            conf.push_str(&format!(
                "zone \"{zone}\" {{ type primary; file \"{}\"; allow-update {{ key \"{KEY_NAME}\"; \
                 }}; }};\n",
                file.display()
            ));
        }
        // The root zone is local (and empty): every name is in a zone BIND holds, so its
        // recursion never leaves the machine (no root hints, no priming).
        std::fs::write(
            d.join("root.zone"),
            "$TTL 60\n@ SOA ns1.test. hostmaster.test. 1 60 60 600 60\n@ NS ns1.test.\n\
             ns1.test. A 127.0.0.1\n",
        )
        .unwrap();
        let conf_file = d.join("named.conf");
        std::fs::write(&conf_file, conf).unwrap();
        let mut bind = Bind {
            port,
            dir,
            proc: None,
            conf: conf_file,
            first: zones[0].0.to_string(),
        };
        bind.spawn();
        bind
    }

    fn spawn(&mut self) {
        let d = self.dir.path();
        let log = d.join("named.log");
        let out = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(named_bin())
            .args(["-g", "-4", "-c"])
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start named: {e}"));
        self.proc = Some(Proc {
            name: "named",
            child,
            log,
        });
        wait_until("BIND answers", Duration::from_secs(30), || {
            if let Some(p) = self.proc.as_mut() {
                if let Ok(Some(st)) = p.child.try_wait() {
                    panic!("named exited ({st}): {}", self.log());
                }
            }
            self.log().contains("running") && self.dig("SOA", &self.first).contains("IN\tSOA")
        });
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("named.log")).unwrap_or_default()
    }

    /// `dig @127.0.0.1 -p PORT +norec +tcp +tries=2 ARGS...`: its standard output.
    fn run_dig(&self, args: &[&str]) -> String {
        let port = self.port.to_string();
        let out = Command::new("dig")
            .args(["@127.0.0.1", "-p", &port, "+norec", "+tcp", "+tries=2"])
            .args(args)
            .output()
            .expect("dig (Debian's dnsutils) runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `dig @127.0.0.1 -p PORT +norec TYPE NAME` (full answer).
    pub fn dig(&self, rtype: &str, name: &str) -> String {
        self.run_dig(&["+time=2", rtype, name])
    }

    /// The TXT values BIND answers at `name` (no CNAME followed: +short of TXT lists the CNAME
    /// target first, left out).
    pub fn txt(&self, name: &str) -> Vec<String> {
        self.run_dig(&["+short", "TXT", name])
            .lines()
            .filter(|l| l.starts_with('"'))
            .map(|l| l.trim().trim_matches('"').to_string())
            .collect()
    }

    /// Runs `nsupdate` (Debian's bind9-dnsutils) with the TSIG key against BIND: `commands`
    /// are its lines (`update add ...`), `send` is added.
    pub fn nsupdate(&self, commands: &str) {
        use std::io::Write;
        let mut child = Command::new("nsupdate")
            .args(["-y", &format!("{ALGORITHM}:{KEY_NAME}:{SECRET}")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nsupdate (Debian's bind9-dnsutils) runs");
        write!(
            child.stdin.take().unwrap(),
            "server 127.0.0.1 {}\n{commands}\nsend\n",
            self.port
        )
        .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "nsupdate: {}", super::text(&out));
    }
}

fn which(name: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}
