//! Unit tests of the installer: the atomic file write and the runtime API's answers.

use super::*;

#[test]
fn atomic_write_replaces_with_mode_0600_and_leaves_no_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    write_atomic(dir.path(), "a.pem", b"one").unwrap();
    write_atomic(dir.path(), "a.pem", b"two").unwrap();
    assert_eq!(fs::read(dir.path().join("a.pem")).unwrap(), b"two");
    let mode = fs::metadata(dir.path().join("a.pem"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("a.pem")]);
}

#[test]
fn prepare_writes_a_default_only_when_the_directory_has_none() {
    let dir = tempfile::tempdir().unwrap();
    let inst = Installer::new(dir.path().into(), dir.path().into(), None);
    std::fs::write(dir.path().join(".a.pem.tmp"), "half").unwrap();
    assert!(inst.prepare_certs_dir().unwrap());
    assert!(!inst.prepare_certs_dir().unwrap());
    assert!(
        !dir.path().join(".a.pem.tmp").exists(),
        "a crash's temp file is removed"
    );
    let pem = fs::read_to_string(dir.path().join(DEFAULT_CERT_FILE)).unwrap();
    assert!(pem.contains("BEGIN CERTIFICATE") && pem.contains("PRIVATE KEY"));
}
