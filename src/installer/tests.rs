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

#[test]
fn status_is_read_from_answers_of_every_haproxy_version() {
    // 2.6, and 3.4.7 (recorded; 3.2+ add `Crt filename:`/`Key filename:` lines, 3.4 `Option:`).
    let v2_6 = "Filename: /c/a.pem\nStatus: Unused\nSerial: 0A\n";
    let v3_4 = "Filename: /c/a.pem\nCrt filename: /c/a.pem\nKey filename: /c/a.pem\nOption: ocsp-update off\nOption: jwt off\nStatus: Used\nSerial: 0A\n";
    assert_eq!(status_used(v2_6), Some(false));
    assert_eq!(status_used(v3_4), Some(true));
    assert!(v3_4.contains("Filename:"));
    assert_eq!(status_used("Filename: /c/a.pem\nSerial: 0A\n"), None);
}
