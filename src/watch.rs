//! Watches DOMAINS_FILE for changes with notify. The directory is watched, not the file: editors
//! and Kubernetes ConfigMaps replace a file by renaming another over it, which a watch on the
//! file itself would miss. The only user of notify.

use std::path::Path;
use std::sync::Arc;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::watch;

/// Bumps `reload` whenever something in the directory of `file` changes. Keep the returned
/// watcher alive for as long as changes should be seen.
pub fn watch_file(
    file: &Path,
    reload: Arc<watch::Sender<u64>>,
) -> notify::Result<RecommendedWatcher> {
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = file
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(e) if changes_content(&e.kind) && concerns(&e.paths, &name) => {
                reload.send_modify(|n| *n = n.wrapping_add(1))
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "watching DOMAINS_FILE"),
        })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

/// Whether an event in the directory is about the watched file: the file itself, or a name
/// starting with ".." (a Kubernetes ConfigMap swaps its `..data` symlink). Other files in the same
/// directory (a log, say) must not trigger reloads.
fn concerns(paths: &[std::path::PathBuf], name: &std::ffi::OsStr) -> bool {
    paths.iter().any(|p| {
        p.file_name()
            .is_some_and(|n| n == name || n.to_string_lossy().starts_with(".."))
    })
}

/// Reads (our own included) change nothing; a write being closed, a create, a rename or a
/// removal may.
fn changes_content(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_rename_over_the_file_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("domains");
        std::fs::write(&file, "a.com\n").unwrap();
        let (tx, mut rx) = watch::channel(0u64);
        let _w = watch_file(&file, Arc::new(tx)).unwrap();
        // What editors and ConfigMaps do: write elsewhere, rename over.
        let tmp = dir.path().join(".domains.new");
        std::fs::write(&tmp, "a.com\nb.com\n").unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .expect("a change is reported within 5 s")
            .unwrap();
        assert!(!changes_content(&EventKind::Access(AccessKind::Read)));
        let name = std::ffi::OsStr::new("domains");
        assert!(concerns(&[dir.path().join("domains")], name));
        assert!(concerns(&[dir.path().join("..data")], name));
        assert!(!concerns(&[dir.path().join("daemon.log")], name));
    }
}
