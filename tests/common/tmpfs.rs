//! A real tmpfs for the fault tests (a disk that fills up and is freed): mounted for a test's
//! life (we run as root), with bind mounts of its folders, unmounted on drop.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use super::run;

/// A tmpfs mounted for the test (and bind mounts of its folders), unmounted on drop.
pub struct Tmpfs {
    /// Where it is mounted.
    pub path: PathBuf,
    binds: Vec<PathBuf>,
}

impl Tmpfs {
    pub fn mount(path: &Path, size_mib: u32) -> Tmpfs {
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

    /// Makes folder `sub` of the tmpfs appear at `target` too (same file system, same space).
    pub fn bind(&mut self, sub: &str, target: &Path) {
        let source = self.path.join(sub);
        std::fs::create_dir_all(&source).unwrap();
        run(Command::new("mount").arg("--bind").arg(&source).arg(target));
        self.binds.push(target.to_path_buf());
    }

    /// Writes a file until the file system says it is full.
    pub fn fill(&self) -> Filler {
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
pub struct Filler(PathBuf);

impl Filler {
    /// Deletes it; returns when.
    pub fn free(self) -> Instant {
        std::fs::remove_file(&self.0).unwrap();
        Instant::now()
    }
}
