//! The runtime-API installer against a real HAProxy in the states a crash of ours can leave it in:
//! a transaction left open on another certificate or on the same one, a certificate committed but
//! not yet in the crt-list, and a certificate installed again.

mod common;

use std::path::Path;

use common::Env;
use haproxy_acme::config::RuntimeApiAddr;
use haproxy_acme::installer::{Haproxy, Installer, Method};

struct Ca {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Ca {
    fn new() -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "installer test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let issuer =
            rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        Ca { issuer }
    }

    /// (chain PEM, key PEM) for `name`.
    fn leaf(&self, name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        (
            format!("{}{}", cert.pem(), self.issuer.pem()),
            key.serialize_pem(),
        )
    }
}

fn serial_of(chain: &str) -> String {
    haproxy_acme::pki::chain_meta(chain, 0)
        .unwrap()
        .serial
        .trim_start_matches('0')
        .to_string()
}

/// The serial HAProxy holds for `file` ("" when it does not know it).
fn held_serial(env: &Env, file: &Path) -> String {
    env.runtime(&format!("show ssl cert {}", file.display()))
        .lines()
        .find_map(|l| l.strip_prefix("Serial:"))
        .map(|s| s.trim().trim_start_matches('0').to_ascii_uppercase())
        .unwrap_or_default()
}

fn crt_list_count(env: &Env, file: &Path) -> usize {
    env.runtime(&format!("show ssl crt-list {}", env.certs_dir.display()))
        .lines()
        .filter(|l| l.split_whitespace().next() == Some(&file.display().to_string()))
        .count()
}

/// Opens a transaction on `file` with `leaf` (chain, key) and leaves it uncommitted, as a crash
/// of ours between `set` and `commit` would.
fn stage(env: &Env, file: &Path, (chain, key): &(String, String)) {
    let staged = env.runtime(&format!(
        "set ssl cert {} <<\n{chain}{key}\n",
        file.display()
    ));
    assert!(staged.contains("Transaction created"), "{staged}");
}

fn open_transaction(env: &Env) -> String {
    env.runtime("show ssl cert")
        .lines()
        .find_map(|l| l.strip_prefix('*'))
        .unwrap_or("")
        .to_string()
}

#[test]
fn installs_hot_whatever_state_a_crash_left_haproxy_in() {
    let env = Env::start();
    let ca = Ca::new();
    let root = env.dir.path().join("installer-root.pem");
    std::fs::write(&root, ca.issuer.pem()).unwrap();
    let installer = Installer::new(
        env.certs_dir.clone(),
        env.certs_dir.clone(),
        Some(RuntimeApiAddr::Unix(env.runtime_sock.clone())),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let install = |id: &str, (chain, key): &(String, String)| {
        let meta = haproxy_acme::pki::chain_meta(chain, 0).unwrap();
        rt.block_on(installer.install(id, chain, key, &meta))
    };
    let file = |id: &str| env.certs_dir.join(format!("{id}.pem"));
    let reloads = env.haproxy_reloads();

    // A new certificate: served, listed once.
    let a = ca.leaf("a.example.test");
    assert_eq!(
        install("a.example.test", &a).unwrap(),
        Method::RuntimeApi,
        "installed through the runtime API"
    );
    assert_eq!(held_serial(&env, &file("a.example.test")), serial_of(&a.0));
    assert_eq!(crt_list_count(&env, &file("a.example.test")), 1);
    assert!(env.served_and_valid("a.example.test", &root).is_some());

    // A transaction left open on another certificate (with a payload that must never be
    // committed): HAProxy 2.6 would take our payload into it under that other name.
    let decoy = ca.leaf("decoy.example.test");
    stage(&env, &file("a.example.test"), &decoy);
    let b = ca.leaf("b.example.test");
    install("b.example.test", &b).expect("install with another certificate's transaction open");
    assert_eq!(held_serial(&env, &file("b.example.test")), serial_of(&b.0));
    assert_eq!(
        held_serial(&env, &file("a.example.test")),
        serial_of(&a.0),
        "the other certificate is untouched"
    );
    assert_eq!(open_transaction(&env), "", "no transaction left open");
    assert!(env.served_and_valid("b.example.test", &root).is_some());

    // A transaction left open on the same certificate: replaced by the new payload.
    stage(&env, &file("b.example.test"), &decoy);
    let b2 = ca.leaf("b.example.test");
    install("b.example.test", &b2).unwrap();
    assert_eq!(held_serial(&env, &file("b.example.test")), serial_of(&b2.0));
    assert_eq!(crt_list_count(&env, &file("b.example.test")), 1);
    assert_eq!(open_transaction(&env), "");

    // Committed but not in the crt-list (a crash between the two): the install lists it.
    let c = ca.leaf("c.example.test");
    let c_file = file("c.example.test");
    env.runtime(&format!("new ssl cert {}", c_file.display()));
    stage(&env, &c_file, &c);
    assert!(env
        .runtime(&format!("commit ssl cert {}", c_file.display()))
        .contains("Success!"));
    assert_eq!(crt_list_count(&env, &c_file), 0);
    install("c.example.test", &c).unwrap();
    assert_eq!(crt_list_count(&env, &c_file), 1);
    assert!(env.served_and_valid("c.example.test", &root).is_some());

    // Created empty (a crash right after `new ssl cert`): the install fills and lists it.
    let d_file = file("d.example.test");
    env.runtime(&format!("new ssl cert {}", d_file.display()));
    let d = ca.leaf("d.example.test");
    install("d.example.test", &d).unwrap();
    assert_eq!(held_serial(&env, &d_file), serial_of(&d.0));
    assert!(env.served_and_valid("d.example.test", &root).is_some());

    // The same certificate again: still listed once.
    install("a.example.test", &a).unwrap();
    assert_eq!(crt_list_count(&env, &file("a.example.test")), 1);
    assert_eq!(env.haproxy_reloads(), reloads, "HAProxy was never reloaded");
}
