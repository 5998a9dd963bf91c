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

/// Certificates of the failover test: valid 30 s, so renewals run all along.
const VALIDITY_SECS: i64 = 30;

#[test]
fn kill_9_of_the_leader_at_random_instants_hands_over_within_the_lease_and_never_issues_twice() {
    use rand::{Rng, SeedableRng};
    let kills = common::env_u64("FLEET_KILLS", || 50) as usize;
    let seed = common::env_u64("FLEET_SEED", common::clock_seed);
    eprintln!("FLEET: seed {seed} (FLEET_SEED={seed} reproduces it), {kills} kills of the leader");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let lease = Duration::from_secs(2);
    let mut f = Fleet::start(
        3,
        Options {
            validity_secs: Some(VALIDITY_SECS as u64),
            ..Options::default()
        },
        lease,
    );
    let ids: Vec<String> = (0..6).map(|i| format!("k{i}.fleet.test")).collect();
    let domains = ids.join(";");
    for (n, id) in ids.iter().enumerate() {
        // Validations land on every node in turn.
        f.dns_a(id, &[&format!("127.0.0.{}", 2 + n % 3)]);
    }
    for i in 0..3 {
        f.start_daemon(i, &domains);
    }
    let mut handovers = Vec::new();
    for _ in 0..kills {
        f.wait_leader(Duration::from_secs(20));
        // Most kills in the first 1.5 s of a term (orders, validations, finalizes, installs of
        // the first issuance or a renewal), some later.
        let after = if rng.random_bool(0.7) {
            rng.random_range(0..1500)
        } else {
            rng.random_range(1500..5000)
        };
        std::thread::sleep(Duration::from_millis(after));
        let leader = f.wait_leader(Duration::from_secs(20));
        f.kill_daemon(leader);
        let killed = Instant::now();
        let next = f.wait_leader(lease * 4);
        handovers.push(killed.elapsed());
        assert_ne!(next, leader, "the killed instance cannot lead");
        f.start_daemon(leader, &domains);
    }
    let ids_ref: Vec<&str> = ids.iter().map(String::as_str).collect();
    wait_until(
        "every node serves every certificate after the kills",
        Duration::from_secs(120),
        || f.all_served(&ids_ref),
    );
    handovers.sort();
    let median = handovers[handovers.len() / 2];
    let max = *handovers.last().unwrap();
    let issued = f.env.issued();
    eprintln!(
        "FLEET: {kills} kill -9 of the leader, lease {lease:?}: handover median {:.2} s, max {:.2} s; \
         pebble issued {} certificates, {} orders",
        median.as_secs_f64(),
        max.as_secs_f64(),
        issued.len(),
        f.env.pebble_new_orders()
    );
    // A follower takes over within the lease (plus a third of it: how often followers ask).
    assert!(
        max <= lease + lease / 3 + Duration::from_millis(1500),
        "a handover took {max:?} with a {lease:?} lease"
    );
    let duplicates =
        common::duplicate_issuances(&issued, VALIDITY_SECS, f.env.offers_renewal_info());
    assert!(
        duplicates.is_empty(),
        "duplicate issuance:\n{}",
        duplicates.join("\n")
    );
    for id in &ids {
        assert!(
            issued.iter().any(|c| c.names == vec![id.clone()]),
            "{id} was never issued"
        );
    }
}

#[test]
fn a_frozen_leader_is_fenced_when_it_wakes_and_orders_nothing() {
    let lease = Duration::from_secs(2);
    let mut f = Fleet::start(3, Options::default(), lease);
    let ids = ["x.fleet.test", "y.fleet.test"];
    let domains = ids.join(";");
    for id in ids {
        f.dns_a(id, &["127.0.0.2", "127.0.0.3", "127.0.0.4"]);
    }
    for i in 0..3 {
        f.start_daemon(i, &domains);
    }
    wait_until("both served everywhere", Duration::from_secs(60), || {
        f.all_served(&ids)
    });
    let frozen = f.wait_leader(Duration::from_secs(10));
    let (_, epoch_before) = f.lease_holder();
    // Validations go to the other nodes: an HAProxy whose own instance is frozen still sends
    // them to it (see ARCHITECTURE.md, "A fleet": peers as backup servers would not).
    let others: Vec<String> = (0..3)
        .filter(|i| *i != frozen)
        .map(|i| f.nodes[i].ip.clone())
        .collect();
    for id in ids {
        f.dns_a(id, &others.iter().map(String::as_str).collect::<Vec<_>>());
    }
    f.freeze(frozen, true);
    // Another instance takes over once the frozen one's lease runs out, and orders.
    let leader = {
        let deadline = Instant::now() + lease * 4;
        loop {
            let (holder, epoch) = f.lease_holder();
            if epoch > epoch_before && holder.as_deref() != Some(&f.nodes[frozen].name) {
                break f
                    .nodes
                    .iter()
                    .position(|n| Some(&n.name) == holder.as_ref())
                    .unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "nobody took over from a frozen leader"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let old_y = f.stored_serial(ids[1]).unwrap();
    let out = f.cli(leader, &domains, &["renew", "--force", ids[1]]);
    assert!(
        out.status.success(),
        "renew --force: {}",
        common::text(&out)
    );
    f.wait(
        "y renewed and served everywhere",
        Duration::from_secs(60),
        |f| f.stored_serial(ids[1]).is_some_and(|s| s != old_y) && f.served_but(&ids, Some(frozen)),
    );
    // While still frozen, the old leader is asked (its admin socket queues the request) to
    // renew x; then it wakes, past its lease.
    let old_x = f.stored_serial(ids[0]).unwrap();
    let asked = {
        let env = f.daemon_env(frozen, &domains);
        std::thread::spawn(move || common::cli_in(env, &[], &["renew", "--force", "x.fleet.test"]))
    };
    std::thread::sleep(Duration::from_millis(500));
    f.freeze(frozen, false);
    let out = asked.join().unwrap();
    assert!(
        out.status.success(),
        "renew --force on the woken instance: {}",
        common::text(&out)
    );
    // It steps down (its lease was taken over), sends nothing to the CA, and the leader does
    // the renewal it was asked for.
    let log = || {
        std::fs::read_to_string(&f.nodes[frozen].daemon.as_ref().unwrap().log).unwrap_or_default()
    };
    wait_until(
        "the woken instance steps down",
        Duration::from_secs(10),
        || log().contains("no longer leading"),
    );
    // Its renewal found the epoch changed (its writes are refused, see tests/pg_store.rs).
    assert!(
        log().contains("taken over by another instance"),
        "the woken instance did not see the takeover:\n{}",
        log()
    );
    wait_until(
        "x renewed by the leader and served everywhere",
        Duration::from_secs(60),
        || f.stored_serial(ids[0]).is_some_and(|s| s != old_x) && f.all_served(&ids),
    );
    let (holder, _) = f.lease_holder();
    assert_eq!(holder.as_deref(), Some(f.nodes[leader].name.as_str()));
    // 2 first issuances + 2 forced renewals: no second order for either.
    assert_eq!(
        f.env.pebble_new_orders(),
        4,
        "orders: one per issuance\n{}",
        f.logs()
    );
    assert_eq!(f.env.issued().len(), 4);
}

#[test]
fn postgresql_restarted_mid_issuance_every_certificate_still_served_once() {
    let mut f = Fleet::start(3, Options::default(), Duration::from_secs(2));
    let ids: Vec<String> = (0..5).map(|i| format!("p{i}.fleet.test")).collect();
    let domains = ids.join(";");
    for id in &ids {
        f.dns_a(id, &["127.0.0.3"]);
    }
    for i in 0..3 {
        f.start_daemon(i, &domains);
    }
    f.wait_leader(Duration::from_secs(20));
    // Mid-issuance: the first orders are on their way.
    std::thread::sleep(Duration::from_millis(300));
    f.pg.kill();
    std::thread::sleep(Duration::from_secs(3));
    f.pg.start_again();
    let ids_ref: Vec<&str> = ids.iter().map(String::as_str).collect();
    wait_until(
        "every node serves every certificate after PostgreSQL came back",
        Duration::from_secs(90),
        || f.all_served(&ids_ref),
    );
    for n in &mut f.nodes {
        n.daemon.as_mut().unwrap().assert_running();
    }
    let issued = f.env.issued();
    assert_eq!(
        issued.len(),
        ids.len(),
        "one certificate per id: {issued:?}"
    );
}

#[test]
fn a_single_machine_moves_to_a_fleet_with_migrate_store_and_nothing_is_ordered_again() {
    let mut f = Fleet::start(3, Options::default(), Duration::from_secs(2));
    let ids = ["m1.fleet.test", "m2.fleet.test"];
    let domains = ids.join(";");
    // One machine first: the sled store in the Env's DATA_DIR, its own HAProxy.
    let mut single = f.env.start_daemon(&domains);
    let root = f.env.issuer_root();
    wait_until("issued on one machine", Duration::from_secs(60), || {
        ids.iter()
            .all(|id| f.env.served_and_valid(id, &root).is_some())
    });
    let serials: Vec<String> = ids
        .iter()
        .map(|id| f.env.served_serial(id).unwrap())
        .collect();
    assert!(single.terminate().success());
    let orders = f.env.pebble_new_orders();
    let key_file = f.key_file.display().to_string();
    let url = f.pg.url();
    let fleet_settings = [
        ("POSTGRES_URL", url.as_str()),
        ("STORE_KEY_FILE", key_file.as_str()),
        ("NODE_NAME", "migrator"),
    ];
    let out = f
        .env
        .cli_with(&domains, &fleet_settings, &["migrate-store"]);
    assert!(
        out.status.success(),
        "migrate-store: {}",
        common::text(&out)
    );
    assert!(
        common::text(&out).contains("compared: equal"),
        "{}",
        common::text(&out)
    );
    // The fleet starts on the copy: the same certificates on every node, no order.
    for i in 0..3 {
        f.start_daemon(i, &domains);
    }
    f.wait(
        "the migrated certificates served by every node",
        Duration::from_secs(60),
        |f| f.all_served(&ids),
    );
    for (id, serial) in ids.iter().zip(&serials) {
        assert_eq!(
            f.stored_serial(id).as_ref(),
            Some(serial),
            "{id} kept its certificate"
        );
        for i in 0..3 {
            assert_eq!(f.served_serial(i, id).as_ref(), Some(serial));
        }
    }
    assert_eq!(f.env.pebble_new_orders(), orders, "no order after the move");
}
