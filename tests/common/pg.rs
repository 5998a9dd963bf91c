//! A real, private PostgreSQL server (Debian's `postgresql`) for the tests: a fresh cluster
//! (`initdb`) in a temporary directory, listening on 127.0.0.1 only on a free port, its Unix
//! socket inside that directory, `trust` authentication for local and 127.0.0.1 connections,
//! `fsync` on. The postmaster is the harness's own child (started as the `postgres` system user
//! when the tests run as root), so `stop` (fast shutdown), `kill` (SIGKILL: a crash) and
//! `start_again` (same data directory and port) act on a known process. Never the system
//! cluster. Dropping it shuts the server down (immediate) and removes the directory. Missing
//! server binaries fail the test with the command that installs them.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// How long a start (initdb excluded) or a crash recovery may take on a loaded machine.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a fast shutdown, or the backends' exit after the postmaster's death, may take.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    postmaster: Option<Child>,
    /// Whether every server program runs as the `postgres` system user (we are root).
    as_postgres: bool,
}

/// The directory of `initdb`, `postgres`, `psql` and `pg_isready`: `PG_BIN_DIR`, else the
/// highest-versioned `/usr/lib/postgresql/<ver>/bin` (Debian's layout).
pub fn pg_bin_dir() -> PathBuf {
    let dir = std::env::var_os("PG_BIN_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::fs::read_dir("/usr/lib/postgresql")
                .ok()?
                .filter_map(|e| {
                    let e = e.ok()?;
                    let version = e.file_name().to_str()?.parse::<f64>().ok()?;
                    Some((version, e.path().join("bin")))
                })
                .filter(|(_, bin)| bin.join("initdb").is_file())
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(_, bin)| bin)
        });
    let missing: Vec<String> = match &dir {
        None => vec!["/usr/lib/postgresql/<version>/bin".into()],
        Some(d) => ["initdb", "postgres", "psql", "pg_isready"]
            .iter()
            .map(|p| d.join(p))
            .filter(|p| !p.is_file())
            .map(|p| p.display().to_string())
            .collect(),
    };
    assert!(
        missing.is_empty(),
        "the PostgreSQL tests need a PostgreSQL server's programs, missing: {missing:?}: run \
         `bash scripts/install-deps.sh` (it installs Debian's postgresql and stops the system \
         cluster it starts; the tests start their own); PG_BIN_DIR names another bin directory"
    );
    dir.unwrap()
}

impl Postgres {
    /// A new cluster, started and accepting connections. Panics (with the server's log) when
    /// it does not come up within a minute.
    pub fn start() -> Postgres {
        let bin = pg_bin_dir();
        let as_postgres = unsafe { libc::geteuid() } == 0;
        let dir = tempfile::Builder::new()
            .prefix("haproxy-acme-pg")
            .tempdir()
            .unwrap();
        if as_postgres {
            let (uid, gid) = postgres_user();
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap_or_else(|e| {
                panic!("chown {} to the postgres user: {e}", dir.path().display())
            });
        }
        let mut pg = Postgres {
            dir,
            bin,
            port: free_port(),
            postmaster: None,
            as_postgres,
        };
        let data = pg.data_dir();
        // --no-sync: initdb's own final flush of the template files only; the server runs with
        // fsync on, which is what the tests' crash and restart cases rely on.
        let out = pg
            .command("initdb")
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ])
            .output()
            .unwrap_or_else(|e| panic!("cannot run initdb: {e}"));
        assert!(out.status.success(), "initdb failed: {}", super::text(&out));
        std::fs::write(
            data.join("pg_hba.conf"),
            "# haproxy-acme tests: trust on the private socket and loopback only\n\
             local all all trust\n\
             host all all 127.0.0.1/32 trust\n",
        )
        .unwrap();
        let conf = format!(
            "\n# haproxy-acme tests (tests/common/pg.rs)\n\
             listen_addresses = '127.0.0.1'\n\
             port = {port}\n\
             unix_socket_directories = '{sock}'\n\
             fsync = on\n\
             synchronous_commit = on\n\
             full_page_writes = on\n\
             max_connections = 50\n\
             shared_buffers = '16MB'\n\
             log_destination = 'stderr'\n\
             logging_collector = off\n",
            port = pg.port,
            sock = pg.dir.path().display(),
        );
        let mut file = File::options()
            .append(true)
            .open(data.join("postgresql.conf"))
            .unwrap();
        std::io::Write::write_all(&mut file, conf.as_bytes()).unwrap();
        pg.spawn();
        pg
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's data directory (inside the temporary directory).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server's log (every start of it, appended), for a failure message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Whether the postmaster the harness started is running.
    pub fn running(&mut self) -> bool {
        self.postmaster
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Fast shutdown (SIGINT: sessions ended, a checkpoint written); returns once the
    /// postmaster has exited.
    pub fn stop(&mut self) {
        let mut child = self
            .postmaster
            .take()
            .expect("stop: PostgreSQL is not running");
        signal(&child, libc::SIGINT);
        let status = wait_exit(&mut child, STOP_TIMEOUT).unwrap_or_else(|| {
            panic!(
                "PostgreSQL's fast shutdown took over {STOP_TIMEOUT:?}: {}",
                self.tail()
            )
        });
        assert!(
            status.success(),
            "PostgreSQL's fast shutdown: {status}: {}",
            self.tail()
        );
    }

    /// A crash: SIGKILL of the postmaster, no shutdown checkpoint. Returns once it is reaped and
    /// its backends and auxiliary processes (which notice the postmaster's death) have exited,
    /// so that `start_again` finds no one attached to the old shared memory.
    pub fn kill(&mut self) {
        let mut child = self
            .postmaster
            .take()
            .expect("kill: PostgreSQL is not running");
        // Stopped first, so that it forks no backend between the listing and the kill.
        signal(&child, libc::SIGSTOP);
        let children = children_of(child.id());
        signal(&child, libc::SIGKILL);
        child.wait().unwrap();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while let Some(pid) = children.iter().find(|p| alive(**p)) {
            assert!(
                Instant::now() < deadline,
                "PostgreSQL process {pid} still runs {STOP_TIMEOUT:?} after its postmaster was \
                 killed: {}",
                self.tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the server again on the same data directory and port (after `stop` or `kill`:
    /// crash recovery replays the WAL); returns once it accepts connections.
    pub fn start_again(&mut self) {
        assert!(
            self.postmaster.is_none(),
            "start_again: PostgreSQL is still running"
        );
        self.spawn();
    }

    /// `psql -At -c SQL` against the server (TCP, 127.0.0.1): its output without the final
    /// newline. Panics when psql fails.
    pub fn psql(&self, sql: &str) -> String {
        self.try_psql(sql)
            .unwrap_or_else(|e| panic!("psql -c {sql:?}: {e}\n{}", self.tail()))
    }

    /// `psql -At -c SQL`: its output, or its error (e.g. while the server is down).
    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        let out = self
            .client("psql")
            .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output();
        let out = out.map_err(|e| format!("cannot run psql: {e}"))?;
        if out.status.success() {
            let s = String::from_utf8_lossy(&out.stdout);
            Ok(s.strip_suffix('\n').unwrap_or(&s).to_string())
        } else {
            Err(format!(
                "psql failed ({}): {}",
                out.status,
                super::text(&out)
            ))
        }
    }

    /// A client program of the server's version (`psql`, `pg_isready`, ...) with the
    /// connection arguments (`-h 127.0.0.1 -p PORT -U postgres -d postgres`), run as the
    /// current user over TCP.
    pub fn client(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        clear_pg_env(&mut cmd);
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", "postgres"])
            .stdin(Stdio::null());
        cmd
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// The end of the server's log, for a panic message.
    fn tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        format!(
            "PostgreSQL's log ({}, last lines):\n{}",
            self.log_path().display(),
            lines[lines.len().saturating_sub(60)..].join("\n")
        )
    }

    /// A server program, run as the `postgres` user when we are root (initdb and postgres
    /// refuse root), from inside the temporary directory (which that user can read).
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "--",
            ])
            .arg(path);
            c
        } else {
            Command::new(path)
        };
        clear_pg_env(&mut cmd);
        cmd.current_dir(self.dir.path()).stdin(Stdio::null());
        cmd
    }

    /// Starts the postmaster (`postgres -D data`, its output appended to the log) and waits
    /// until it accepts connections.
    fn spawn(&mut self) {
        let started = Instant::now();
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(self.data_dir())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start postgres: {e}"));
        self.postmaster = Some(child);
        loop {
            if let Some(status) = self.postmaster.as_mut().unwrap().try_wait().unwrap() {
                self.postmaster = None;
                panic!("postgres exited ({status}) while starting: {}", self.tail());
            }
            let ready = self
                .client("pg_isready")
                .args(["-q", "-t", "1"])
                .status()
                .is_ok_and(|s| s.success());
            if ready && self.try_psql("select 1").as_deref() == Ok("1") {
                return;
            }
            assert!(
                started.elapsed() < READY_TIMEOUT,
                "PostgreSQL on 127.0.0.1:{} does not accept connections after {READY_TIMEOUT:?}: {}",
                self.port,
                self.tail()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for Postgres {
    /// Immediate shutdown (SIGQUIT), SIGKILL if it lingers; the directory goes with `dir`.
    fn drop(&mut self) {
        let Some(mut child) = self.postmaster.take() else {
            return;
        };
        let children = children_of(child.id());
        signal(&child, libc::SIGQUIT);
        if wait_exit(&mut child, Duration::from_secs(10)).is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while children.iter().any(|p| alive(*p)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The uid and gid of the `postgres` system user (created by Debian's postgresql-common).
fn postgres_user() -> (u32, u32) {
    let name = std::ffi::CString::new("postgres").unwrap();
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !pw.is_null(),
        "no `postgres` system user (running as root, the tests start PostgreSQL as that user): \
         run `bash scripts/install-deps.sh` (Debian's postgresql creates it)"
    );
    unsafe { ((*pw).pw_uid, (*pw).pw_gid) }
}

/// No PG* variable of the caller's environment (PGPORT, PGHOST, PGDATA, PGOPTIONS, ...) reaches
/// the programs: the arguments say everything.
fn clear_pg_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(|k| k.starts_with("PG")) {
            cmd.env_remove(key);
        }
    }
}

fn signal(child: &Child, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // The child is not reaped yet (we hold it), so the pid is still its own.
    unsafe { libc::kill(pid, sig) };
}

/// Waits up to `timeout` for `child` to exit.
fn wait_exit(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The processes whose parent is `pid` (from /proc: the postmaster's backends and auxiliary
/// processes).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| stat(*p).is_some_and(|(_, ppid)| ppid == pid))
        .collect()
}

/// Whether `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    stat(pid).is_some_and(|(state, _)| state != 'Z' && state != 'X')
}

/// The state and parent pid in /proc/PID/stat (after the command name, which may hold spaces).
fn stat(pid: u32) -> Option<(char, u32)> {
    let text =
        std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat")).ok()?;
    let mut fields = text.get(text.rfind(')')? + 1..)?.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}
