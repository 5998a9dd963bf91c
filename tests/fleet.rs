//! A fleet on one PostgreSQL store (issue 15): three nodes, each an HAProxy with an instance of
//! the daemon beside it, validations landing on whichever node DNS names; every certificate
//! served by every node without a reload; one writer to the CA at a time, handed over when the
//! leader dies, and fenced when a frozen leader wakes.

mod common;

use std::time::{Duration, Instant};

use common::fleet::Fleet;
use common::{wait_until, Options};

const IDS: [&str; 3] = ["a.fleet.test", "b.fleet.test", "c.fleet.test"];

fn domains() -> String {
    IDS.join(";")
}

#[test]
fn three_nodes_serve_every_certificate_whichever_node_the_ca_validates_on() {
    let mut f = Fleet::start(3, Options::default(), Duration::from_secs(3));
    // a: the CA validates on node 3, b on node 2, c on node 1: a follower's responder answers
    // (the leader is whichever instance wins the lease).
    f.dns_a(IDS[0], &["127.0.0.4"]);
    f.dns_a(IDS[1], &["127.0.0.3"]);
    f.dns_a(IDS[2], &["127.0.0.2", "127.0.0.3", "127.0.0.4"]);
    let started = Instant::now();
    for i in 0..3 {
        f.start_daemon(i, &domains());
    }
    let leader = f.wait_leader(Duration::from_secs(20));
    wait_until(
        "every certificate served by every node",
        Duration::from_secs(90),
        || f.all_served(&IDS),
    );
    let served_all = started.elapsed();
    println!(
        "fleet: 3 certificates served on all 3 nodes {:.2} s after the instances started (leader {})",
        served_all.as_secs_f64(),
        f.nodes[leader].name
    );
    // One certificate per id, however many instances: one writer.
    let issued = f.env.issued();
    assert_eq!(issued.len(), 3, "one certificate per id: {issued:?}");
    assert_eq!(f.env.pebble_new_orders(), 3, "one order per id");
    for i in 0..3 {
        assert_eq!(f.reloads(i), 0, "{} reloaded", f.nodes[i].name);
        // The files too, so a restarted HAProxy serves the same.
        for id in IDS {
            assert!(
                f.nodes[i].certs_dir.join(format!("{id}.pem")).is_file(),
                "{} has no file for {id}",
                f.nodes[i].name
            );
        }
    }
    // Each node noted what it serves; keys are sealed at rest.
    let installed = f.pg.psql("SELECT count(*) FROM haproxy_acme.installed");
    assert_eq!(installed.trim(), "9", "3 nodes x 3 certificates noted");
    let keys =
        f.pg.psql("SELECT encode(key_sealed, 'escape') FROM haproxy_acme.certificates");
    assert!(!keys.contains("PRIVATE KEY"), "keys are stored sealed");
    // A node whose HAProxy restarts serves the same from its files; one that joins late (its
    // instance restarted with an empty DATA_DIR) catches up.
    f.kill_haproxy(2);
    f.start_haproxy(2);
    f.kill_daemon(1);
    std::fs::remove_dir_all(&f.nodes[1].certs_dir).unwrap();
    std::fs::create_dir_all(&f.nodes[1].certs_dir).unwrap();
    f.kill_haproxy(1);
    f.start_haproxy(1);
    f.start_daemon(1, &domains());
    wait_until("the late node catches up", Duration::from_secs(60), || {
        f.all_served(&IDS)
    });
    assert_eq!(f.env.issued().len(), 3, "no certificate ordered again");
}
