//! Puts certificates into HAProxy: an atomic `<CERTS_DIR>/<id>.pem` (so a restarted HAProxy
//! serves the same certificate; `config::cert_file_name` shortens ids too long for a file name),
//! then the runtime API (so the running one does, without a reload), confirmed by reading the
//! serial back. Files-only when no runtime API is configured.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use haproxy_acme_state::CertMeta;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::Mutex;

use crate::config::{cert_file_name, RuntimeApiAddr};
use crate::health::{Conditions, Part};
pub use crate::watchdog::Observed;

/// One runtime-API command must answer within this time.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// The default certificate's file name: first in sort order, so HAProxy uses it for unknown names.
pub const DEFAULT_CERT_FILE: &str = "000-default.pem";

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("cannot write {path}: {source}")]
    File { path: PathBuf, source: io::Error },
    #[error("HAProxy runtime API at {addr} unreachable: {source}")]
    Unreachable { addr: String, source: io::Error },
    #[error("HAProxy refused `{command}`: {message}")]
    Refused { command: String, message: String },
    #[error("the certificate to install cannot be read: {0}")]
    Pem(#[from] crate::pki::PkiError),
    #[error("HAProxy serves serial {served} for {file}, expected {expected}")]
    Mismatch {
        file: String,
        served: String,
        expected: String,
    },
}

/// How a certificate reached HAProxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    RuntimeApi,
    FilesOnly,
}

/// What the reconciler needs from HAProxy (and the certificate directory it loads from).
#[async_trait]
pub trait Haproxy: Send + Sync + 'static {
    /// Makes HAProxy serve this certificate for `id` (and a restarted HAProxy too); returns only
    /// once it is confirmed served.
    async fn install(
        &self,
        id: &str,
        chain_pem: &str,
        key_pem: &str,
        meta: &CertMeta,
    ) -> Result<Method, InstallError>;

    /// Removes certificate `id` from HAProxy and the certificate directory; idempotent.
    async fn remove(&self, id: &str) -> Result<(), InstallError>;

    /// What HAProxy serves and what the file holds for each of `ids`, in order (the watchdog).
    async fn observe(&self, ids: &[&str]) -> Result<Vec<Observed>, InstallError>;
    /// Whether HAProxy's runtime API answers now (an install waiting for it is tried again).
    async fn reachable(&self) -> Result<(), InstallError> {
        Ok(())
    }
}

#[async_trait]
impl Haproxy for Installer {
    /// Installs certificate `id`: file first, then the runtime API, then a read-back of the serial.
    async fn install(
        &self,
        id: &str,
        chain_pem: &str,
        key_pem: &str,
        meta: &CertMeta,
    ) -> Result<Method, InstallError> {
        let bundle = crate::pki::haproxy_bundle(chain_pem, key_pem)?;
        let name = cert_file_name(id);
        let dir = self.certs_dir.clone();
        let data = bundle.clone();
        tokio::task::spawn_blocking(move || write_atomic(&dir, &name, data.as_bytes()))
            .await
            .map_err(|e| InstallError::File {
                path: self.certs_dir.join(cert_file_name(id)),
                source: io::Error::other(e),
            })??;
        let Some(addr) = &self.runtime else {
            return Ok(Method::FilesOnly);
        };
        // Only the runtime API's part is serialized: the file (each id its own, and one id is
        // never installed twice at once) is written, fsyncs and all, while another install
        // talks to HAProxy.
        let _guard = self.lock.lock().await;
        let api = RuntimeApi { addr };
        let (file, crt_list) = self.haproxy_names(id);
        let crt_list = crt_list.as_str();

        // Every command here costs the same whatever HAProxy holds: listing all certificates or
        // a whole crt-list per install made 10,000 installs quadratic (BENCHMARKS.md, scenario 4).
        let before = api.send(&format!("show ssl cert {file}")).await?;
        let known = before.contains("Filename:");
        if !known {
            api.expect(
                &format!("new ssl cert {file}"),
                &["New empty certificate store"],
            )
            .await?;
        }
        api.set_payload(&file, &bundle).await?;
        api.expect(&format!("commit ssl cert {file}"), &["Success!"])
            .await?;
        // "Status: Used" = referenced by a crt-list entry; HAProxy versions that do not say have
        // the crt-list itself read.
        let listed = match (known, status_used(&before)) {
            (false, _) => false,
            (true, Some(used)) => used,
            (true, None) => api.in_crt_list(crt_list, &file).await?,
        };
        if !listed {
            api.expect(
                &format!("add ssl crt-list {crt_list} {file}"),
                // The second: listed already (a status we could not read, or a race with an
                // operator's own command); what was wanted holds.
                &["Success!", "file already exists"],
            )
            .await?;
        }
        let shown = api.send(&format!("show ssl cert {file}")).await?;
        if status_used(&shown) == Some(false) {
            return Err(InstallError::Refused {
                command: format!("add ssl crt-list {crt_list} {file}"),
                message: "HAProxy reports the certificate as not used by any crt-list".into(),
            });
        }
        let served = shown
            .lines()
            .find_map(|l| l.strip_prefix("Serial:"))
            .map(|s| s.trim().to_ascii_uppercase())
            .unwrap_or_default();
        // Compare as numbers: leading zeros are spelling, not value.
        if served.trim_start_matches('0') != meta.serial.trim_start_matches('0') {
            return Err(InstallError::Mismatch {
                file,
                served,
                expected: meta.serial.clone(),
            });
        }
        Ok(Method::RuntimeApi)
    }

    /// `show info` answers (files-only: nothing to reach).
    async fn reachable(&self) -> Result<(), InstallError> {
        match &self.runtime {
            None => Ok(()),
            Some(addr) => RuntimeApi { addr }
                .expect("show info", &["Name: HAProxy"])
                .await
                .map(drop),
        }
    }

    /// Removes certificate `id` from HAProxy (crt-list entry, then the certificate) and deletes
    /// its file (`--prune`). Entries HAProxy does not know are fine: removal is idempotent.
    async fn remove(&self, id: &str) -> Result<(), InstallError> {
        let _guard = self.lock.lock().await;
        if let Some(addr) = &self.runtime {
            let api = RuntimeApi { addr };
            let (file, crt_list) = self.haproxy_names(id);
            let crt_list = crt_list.as_str();
            api.abort_stale_transaction().await?;
            if api.in_crt_list(crt_list, &file).await? {
                api.expect(
                    &format!("del ssl crt-list {crt_list} {file}"),
                    &["deleted in crtlist", "Success!"],
                )
                .await?;
            }
            if api
                .send(&format!("show ssl cert {file}"))
                .await?
                .contains("Filename:")
            {
                api.expect(&format!("del ssl cert {file}"), &["deleted!", "Success!"])
                    .await?;
            }
        }
        let path = self.certs_dir.join(cert_file_name(id));
        match fs::remove_file(&path) {
            Ok(()) => fs::File::open(&self.certs_dir)
                .and_then(|d| d.sync_all())
                .map_err(|source| InstallError::File {
                    path: self.certs_dir.clone(),
                    source,
                }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(InstallError::File { path, source }),
        }
    }

    async fn observe(&self, ids: &[&str]) -> Result<Vec<Observed>, InstallError> {
        let files: Vec<String> = ids.iter().map(|id| self.haproxy_names(id).0).collect();
        let paths = ids
            .iter()
            .map(|id| self.certs_dir.join(format!("{id}.pem")));
        let api = self.runtime.as_ref().map(|addr| RuntimeApi { addr });
        crate::watchdog::observe(api.as_ref(), &files, paths.collect()).await
    }
}

/// HAProxy through its runtime API, and the certificate files.
pub struct Installer {
    certs_dir: PathBuf,
    /// The same directory as HAProxy names it (runtime API file names must match its own).
    haproxy_certs_dir: PathBuf,
    runtime: Option<RuntimeApiAddr>,
    /// HAProxy has one global SSL transaction: installs' runtime-API commands are serialized.
    lock: Mutex<()>,
}

impl Installer {
    pub fn new(
        certs_dir: PathBuf,
        haproxy_certs_dir: PathBuf,
        runtime: Option<RuntimeApiAddr>,
    ) -> Installer {
        Installer {
            certs_dir,
            haproxy_certs_dir,
            runtime,
            lock: Mutex::new(()),
        }
    }

    /// Prepares the certificate directory at start: removes temporary files a crash left behind,
    /// and writes a self-signed `000-default.pem` when the directory holds no certificate, so
    /// HAProxy can serve TLS before the first issuance. Returns whether it wrote the default.
    pub fn prepare_certs_dir(&self) -> Result<bool, InstallError> {
        let file_err = |path: &Path, source| InstallError::File {
            path: path.to_path_buf(),
            source,
        };
        fs::create_dir_all(&self.certs_dir).map_err(|e| file_err(&self.certs_dir, e))?;
        let mut has_pem = false;
        for entry in fs::read_dir(&self.certs_dir).map_err(|e| file_err(&self.certs_dir, e))? {
            let entry = entry.map_err(|e| file_err(&self.certs_dir, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') && name.ends_with(".pem.tmp") {
                // Left by a crash inside `write_atomic`: the target is intact, the temp is junk.
                let _ = fs::remove_file(entry.path());
            } else if name.ends_with(".pem") && !name.starts_with('.') {
                has_pem = true;
            }
        }
        if has_pem {
            return Ok(false);
        }
        let pem = crate::pki::self_signed_default().map_err(|e| InstallError::File {
            path: self.certs_dir.join(DEFAULT_CERT_FILE),
            source: io::Error::other(e.to_string()),
        })?;
        write_atomic(&self.certs_dir, DEFAULT_CERT_FILE, pem.as_bytes())?;
        Ok(true)
    }

    /// Waits until HAProxy's runtime API answers (no-op in files-only mode), so nothing is
    /// ordered before validation traffic can reach us through HAProxy; meanwhile `conditions`
    /// says so. Returns false if `shutdown` turned true first.
    pub async fn wait_for_runtime_api(
        &self,
        shutdown: &mut tokio::sync::watch::Receiver<bool>,
        conditions: &Conditions,
    ) -> bool {
        let Some(addr) = &self.runtime else {
            return true;
        };
        let api = RuntimeApi { addr };
        let mut delay = Duration::from_millis(10);
        loop {
            let now = crate::clock::unix_now();
            match api.send("show info").await {
                Ok(info) if info.contains("Name: HAProxy") => {
                    conditions.clear(Part::RuntimeApi, now);
                    return true;
                }
                Ok(answer) => {
                    let why = format!("unexpected answer to `show info`: {}", answer.trim());
                    conditions.set(Part::RuntimeApi, now, why);
                }
                Err(e) => {
                    conditions.set(Part::RuntimeApi, now, e.to_string());
                }
            }
            // HAProxy usually comes up within moments of us: look again soon, then less often.
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.changed() => return false,
            }
            delay = (delay * 2).min(Duration::from_millis(500));
        }
    }
}

impl Installer {
    /// The file name of certificate `id` and the crt-list name of the directory, as HAProxy
    /// names them (the directory without a trailing slash).
    fn haproxy_names(&self, id: &str) -> (String, String) {
        let file = self
            .haproxy_certs_dir
            .join(cert_file_name(id))
            .display()
            .to_string();
        let dir = self.haproxy_certs_dir.display().to_string();
        (file, dir.trim_end_matches('/').to_string())
    }
}

/// Whether `show ssl cert FILE` says the certificate is used by a crt-list entry; `None` when
/// the answer has no `Status:` line (an older HAProxy).
fn status_used(show: &str) -> Option<bool> {
    show.lines()
        .find_map(|l| l.strip_prefix("Status:"))
        .map(|s| s.trim() == "Used")
}

/// Writes `dir/name` atomically with mode 0600: a temporary dotfile in the same directory,
/// fsync, rename over the target, fsync the directory. A crash leaves the old file or the new
/// one, never a truncated one.
pub fn write_atomic(dir: &Path, name: &str, data: &[u8]) -> Result<(), InstallError> {
    let target = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let file_err = |path: &Path, source| InstallError::File {
        path: path.to_path_buf(),
        source,
    };
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| file_err(&tmp, e))?;
    let result = (|| {
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
        f.write_all(data)?;
        f.sync_all()
    })();
    drop(f);
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(file_err(&tmp, e));
    }
    fs::rename(&tmp, &target).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        file_err(&target, e)
    })?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| file_err(dir, e))
}

/// HAProxy's runtime API in non-interactive mode: one command per connection.
pub(crate) struct RuntimeApi<'a> {
    pub(crate) addr: &'a RuntimeApiAddr,
}

impl RuntimeApi<'_> {
    pub(crate) async fn send(&self, command: &str) -> Result<String, InstallError> {
        let unreachable = |source| InstallError::Unreachable {
            addr: self.addr.to_string(),
            source,
        };
        let fut = async {
            match self.addr {
                RuntimeApiAddr::Unix(p) => exchange(UnixStream::connect(p).await?, command).await,
                RuntimeApiAddr::Tcp(a) => {
                    exchange(TcpStream::connect(a.as_str()).await?, command).await
                }
            }
        };
        match tokio::time::timeout(COMMAND_TIMEOUT, fut).await {
            Ok(r) => r.map_err(unreachable),
            Err(_) => Err(unreachable(io::Error::new(
                io::ErrorKind::TimedOut,
                "no answer within 10 s",
            ))),
        }
    }

    /// Whether `file` is an entry of the crt-list (the directory bind) `crt_list`.
    async fn in_crt_list(&self, crt_list: &str, file: &str) -> Result<bool, InstallError> {
        let listed = self.send(&format!("show ssl crt-list {crt_list}")).await?;
        Ok(listed
            .lines()
            .any(|l| l.split_whitespace().next() == Some(file)))
    }

    /// Stages `bundle` as the new content of `file`. HAProxy has one transaction at a time: one
    /// left open (by a crash of ours mid-install) would take our payload under its own name
    /// (HAProxy 2.6 answers "Transaction updated for certificate <the other file>!"), so the
    /// answer must name `file`; when it names another, that transaction is aborted and the
    /// payload sent again.
    async fn set_payload(&self, file: &str, bundle: &str) -> Result<(), InstallError> {
        let command = format!("set ssl cert {file} <<\n{bundle}\n");
        let ours = |answer: &str| {
            answer.contains(&format!("Transaction created for certificate {file}!"))
                || answer.contains(&format!("Transaction updated for certificate {file}!"))
        };
        if ours(&self.send(&command).await?) {
            return Ok(());
        }
        self.abort_stale_transaction().await?;
        let answer = self.send(&command).await?;
        if ours(&answer) {
            return Ok(());
        }
        Err(InstallError::Refused {
            command: format!("set ssl cert {file}"),
            message: answer.trim().to_string(),
        })
    }

    /// A transaction left open (by a crash of ours mid-install) blocks every other one.
    async fn abort_stale_transaction(&self) -> Result<(), InstallError> {
        let listing = self.send("show ssl cert").await?;
        for stale in listing.lines().filter_map(|l| l.strip_prefix('*')) {
            self.expect(&format!("abort ssl cert {stale}"), &["aborted"])
                .await?;
        }
        Ok(())
    }

    /// Sends `command` and fails with HAProxy's own message unless the answer contains one of
    /// `markers`.
    async fn expect(&self, command: &str, markers: &[&str]) -> Result<String, InstallError> {
        let answer = self.send(command).await?;
        if markers.iter().any(|m| answer.contains(m)) {
            Ok(answer)
        } else {
            // Never echo a payload (it holds the private key): name the command by its first line.
            let command = command.lines().next().unwrap_or("").to_string();
            Err(InstallError::Refused {
                command,
                message: answer.trim().to_string(),
            })
        }
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    command: &str,
) -> io::Result<String> {
    s.write_all(command.as_bytes()).await?;
    if !command.ends_with('\n') {
        s.write_all(b"\n").await?;
    }
    s.flush().await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests;
