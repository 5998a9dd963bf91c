//! Faults the daemon must wait out and heal from without a restart, broken for real: here, the
//! store on a real tmpfs mount filled until ENOSPC (needs root, as the test machines run). Times
//! to recover are printed as `FAULTS-DISK:` lines.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use haproxy_acme::store::sled::SledStore;
use haproxy_acme::store::{Change, Store};
use haproxy_acme_state::{KeyType, Record};

/// A tmpfs mounted for the test (and bind mounts of its folders), unmounted on drop.
struct Tmpfs {
    path: PathBuf,
    binds: Vec<PathBuf>,
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed (these tests mount tmpfs: they need root): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Tmpfs {
    fn mount(path: &Path, size_mib: u32) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size_mib}m,mode=0700"))
            .arg("tmpfs")
            .arg(path));
        Tmpfs {
            path: path.to_path_buf(),
            binds: Vec::new(),
        }
    }

    /// Writes a file until the file system says it is full.
    fn fill(&self) -> Filler {
        let path = self.path.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        for chunk in [1 << 20, 4096, 1] {
            let buf = vec![0u8; chunk];
            let e = loop {
                if let Err(e) = f.write_all(&buf) {
                    break e;
                }
            };
            assert_eq!(
                e.raw_os_error(),
                Some(28),
                "filling {}: {e}",
                path.display()
            );
        }
        Filler(path)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        for p in self.binds.iter().rev().chain([&self.path]) {
            let ok = Command::new("umount")
                .arg(p)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("umount").arg("-l").arg(p).status();
            }
        }
    }
}

/// The file that fills a tmpfs.
struct Filler(PathBuf);

impl Filler {
    /// Deletes it; returns when.
    fn free(self) -> Instant {
        std::fs::remove_file(&self.0).unwrap();
        Instant::now()
    }
}

fn ms(t: Instant) -> u128 {
    t.elapsed().as_millis()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_takes_writes_again_once_the_disk_has_room() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&dir.path().join("disk"), 8);
    let store: Arc<dyn Store> = Arc::new(SledStore::open(&disk.path.join("data")).unwrap());
    let record = |i: usize, at: i64| {
        Record::new(
            vec![format!("s{}.example.test", i % 20)],
            KeyType::EcdsaP256,
            at,
        )
    };
    store
        .put_all((0..20).map(|i| record(i, 0)).collect())
        .await
        .unwrap();
    let filler = disk.fill();
    // Writes until one fails; every one acknowledged before must survive.
    let mut acked = std::collections::BTreeMap::new();
    let mut failed = None;
    for i in 0..100_000 {
        let r = record(i, i as i64 + 1);
        let put = r.clone();
        match store.update(&r.id, move |_| (Change::Put(put), ())).await {
            Ok(()) => {
                acked.insert(r.id.clone(), r);
            }
            Err(e) => {
                failed = Some((r, e));
                break;
            }
        }
    }
    let (lost, e) = failed.expect("a write fails on a full disk");
    let e = e.to_string();
    assert!(
        e.contains("No space left on device") && e.contains("is the disk full?"),
        "{e}"
    );
    // While the disk is full: reads are served, writes fail at once with the same reason.
    assert_eq!(store.records().await.unwrap().len(), 20);
    let t = Instant::now();
    let again = store.probe_write(1).await.unwrap_err().to_string();
    assert!(again.contains("No space left on device"), "{again}");
    assert!(t.elapsed() < Duration::from_millis(500), "refused at once");
    std::thread::sleep(Duration::from_millis(1100));
    assert!(
        store.probe_write(2).await.is_err(),
        "a reopen is tried, and fails while the disk is still full"
    );

    let freed = filler.free();
    let mut tries = 0;
    while store.probe_write(3).await.is_err() {
        tries += 1;
        assert!(
            freed.elapsed() < Duration::from_secs(10),
            "not writable 10 s after"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let recovered = ms(freed);
    // Nothing acknowledged was lost; the failed write is there or not, whole either way.
    let stored = store.records().await.unwrap();
    assert_eq!(stored.len(), 20);
    for r in &stored {
        let want = acked.get(&r.id);
        assert!(
            Some(r) == want
                || (r.id == lost.id && *r == lost)
                || (want.is_none() && r.created_at == 0),
            "{}: stored {r:?}, acknowledged {want:?}",
            r.id
        );
    }
    // And it keeps taking writes.
    let last = record(7, 999_999);
    let put = last.clone();
    store
        .update(&last.id, move |_| (Change::Put(put), ()))
        .await
        .unwrap();
    assert_eq!(store.get(&last.id).await.unwrap(), Some(last));
    eprintln!(
        "FAULTS-DISK: store on a full 8 MiB tmpfs: {} writes acknowledged, then ENOSPC; writable again {recovered} ms after the space was freed ({tries} refused probes meanwhile)",
        acked.len()
    );
}
