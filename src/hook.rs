//! The deploy hook (`DEPLOY_HOOK`): a shell command run after each new certificate is installed,
//! with certbot's variables, so scripts written for certbot's `--deploy-hook` keep working.
//! `RENEWED_LINEAGE` is `DATA_DIR/live/<id>/` holding `cert.pem`, `chain.pem`, `fullchain.pem` and
//! `privkey.pem` (0600), like certbot's `live/` directory; `RENEWED_DOMAINS` lists the names.
//! The alert hook (`ALERT_HOOK`) runs the same way with its own variables ([`run_with`]).

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::installer::write_atomic;

/// Output kept per stream (the rest is read and dropped, so the hook never blocks on a pipe).
const MAX_OUTPUT: usize = 16 * 1024;

/// The umask the process was started with (unset: the hook inherits ours).
static INHERITED_UMASK: OnceLock<libc::mode_t> = OnceLock::new();

/// Records the umask the operator started the process with: `main` makes its own 0o077 (every
/// file of ours is private), and the hook, the operator's program, runs with the original one.
pub fn set_inherited_umask(mask: libc::mode_t) {
    let _ = INHERITED_UMASK.set(mask);
}

/// The directory the hook gets as `RENEWED_LINEAGE` for certificate `id`.
pub fn lineage_dir(data_dir: &Path, id: &str) -> PathBuf {
    data_dir.join("live").join(id)
}

/// Writes the lineage files of a certificate: `chain_pem` is the leaf followed by its issuers
/// (split and re-encoded by `pki::split_chain`).
pub fn write_lineage(dir: &Path, chain_pem: &str, key_pem: &str) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let (leaf, issuers) = crate::pki::split_chain(chain_pem).map_err(std::io::Error::other)?;
    let files = [
        ("fullchain.pem", format!("{leaf}{issuers}")),
        ("cert.pem", leaf),
        ("chain.pem", issuers),
        ("privkey.pem", key_pem.to_string()),
    ];
    for (name, data) in files {
        write_atomic(dir, name, data.as_bytes()).map_err(std::io::Error::other)?;
    }
    Ok(())
}

/// What a hook run produced.
#[derive(Debug)]
pub struct Outcome {
    /// `None`: exited 0 in time. Otherwise why not, with the end of its output.
    pub error: Option<String>,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

/// Runs `command` with `sh -c`, the certbot variables set, stdin closed; kills it (and its
/// process group) after `timeout`.
pub async fn run(command: &str, lineage: &Path, names: &[String], timeout: Duration) -> Outcome {
    let vars = [
        ("RENEWED_LINEAGE", lineage.as_os_str().to_owned()),
        ("RENEWED_DOMAINS", names.join(" ").into()),
    ];
    run_with(command, &vars, timeout).await
}

/// Runs `command` with `sh -c` and the variables `vars` (the alert hook's, say), stdin closed;
/// kills it (and its process group) after `timeout`.
pub async fn run_with(
    command: &str,
    vars: &[(&str, std::ffi::OsString)],
    timeout: Duration,
) -> Outcome {
    let started = std::time::Instant::now();
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c")
        .arg(command)
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(&mask) = INHERITED_UMASK.get() {
        // SAFETY: umask(2) is async-signal-safe, the one call made between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                libc::umask(mask);
                Ok(())
            });
        }
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Outcome {
                error: Some(format!("cannot start sh: {e}")),
                stdout: String::new(),
                stderr: String::new(),
                took: started.elapsed(),
            }
        }
    };
    let out = read_bounded(child.stdout.take());
    let err = read_bounded(child.stderr.take());
    let waited = tokio::time::timeout(timeout, async {
        let (out, err, status) = tokio::join!(out, err, child.wait());
        (out, err, status)
    })
    .await;
    let (stdout, stderr, error) = match waited {
        Ok((stdout, stderr, Ok(status))) if status.success() => (stdout, stderr, None),
        Ok((stdout, stderr, Ok(status))) => {
            let why = match status.code() {
                Some(c) => format!("exit status {c}"),
                None => format!("{status}"),
            };
            (stdout, stderr, Some(why))
        }
        Ok((stdout, stderr, Err(e))) => (stdout, stderr, Some(format!("wait failed: {e}"))),
        Err(_) => {
            if let Some(pid) = child.id() {
                // The whole group: `sh -c` may have started children that hold the pipes.
                // SAFETY: kill(2) with a negative pid signals the group we created for the hook.
                unsafe {
                    libc::kill(-(pid as i32), libc::SIGKILL);
                }
            }
            let _ = child.kill().await;
            (
                String::new(),
                String::new(),
                Some(format!(
                    "timed out after {}s and was killed",
                    timeout.as_secs()
                )),
            )
        }
    };
    let error = error.map(|why| {
        let tail = last_line(&stderr).or_else(|| last_line(&stdout));
        match tail {
            Some(t) => format!("{why}; last output: {t}"),
            None => why,
        }
    });
    Outcome {
        error,
        stdout,
        stderr,
        took: started.elapsed(),
    }
}

fn last_line(s: &str) -> Option<String> {
    let line = s.lines().rev().find(|l| !l.trim().is_empty())?.trim();
    Some(line.chars().take(300).collect())
}

async fn read_bounded<R: tokio::io::AsyncRead + Unpin>(pipe: Option<R>) -> String {
    let Some(mut pipe) = pipe else {
        return String::new();
    };
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = MAX_OUTPUT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    String::from_utf8_lossy(&kept).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_hook_sees_certbots_variables_and_its_failure_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["a.test".to_string(), "www.a.test".to_string()];
        let ok = run(
            "echo \"$RENEWED_DOMAINS|$RENEWED_LINEAGE\"",
            dir.path(),
            &names,
            Duration::from_secs(10),
        )
        .await;
        assert!(ok.error.is_none(), "{:?}", ok.error);
        assert_eq!(
            ok.stdout.trim(),
            format!("a.test www.a.test|{}", dir.path().display())
        );
        let failed = run(
            "echo starting; echo 'no such service' >&2; exit 3",
            dir.path(),
            &names,
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(
            failed.error.as_deref(),
            Some("exit status 3; last output: no such service")
        );
        let slow = run(
            "sleep 30 & sleep 30",
            dir.path(),
            &names,
            Duration::from_millis(300),
        )
        .await;
        assert!(
            slow.error
                .as_deref()
                .unwrap()
                .starts_with("timed out after"),
            "{:?}",
            slow.error
        );
        assert!(
            slow.took < Duration::from_secs(5),
            "the hook and its children are killed, not waited for"
        );
    }
}
