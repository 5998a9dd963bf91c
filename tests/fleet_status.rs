//! A fleet made visible (issue 15): `status`, `state dump` and `/metrics`, asked of a follower's
//! admin socket, name the instance that leads and since when, and each node's installed serial
//! per certificate; a node whose HAProxy is down when a certificate is renewed shows as lagging
//! on that certificate until its HAProxy is back and its instance installed it.

mod common;

use std::process::Output;
use std::time::Duration;

use common::fleet::Fleet;
use common::{daemon_metrics, text, Options};
use serde_json::Value;

const IDS: [&str; 2] = ["a.status.test", "b.status.test"];

fn domains() -> String {
    IDS.join(";")
}

fn cli(f: &Fleet, i: usize, args: &[&str]) -> Output {
    f.cli(i, &domains(), args)
}

fn ok(f: &Fleet, i: usize, args: &[&str]) -> String {
    let out = cli(f, i, args);
    assert!(
        out.status.success(),
        "{args:?} on {}: {}\nlogs:\n{}",
        f.nodes[i].name,
        text(&out),
        f.logs()
    );
    String::from_utf8(out.stdout).unwrap()
}

fn dump(f: &Fleet, i: usize) -> Value {
    serde_json::from_str(&ok(f, i, &["state", "dump"])).expect("the dump is JSON")
}

/// The dump's `fleet.nodes` entry of `name`.
fn node<'a>(dump: &'a Value, name: &str) -> &'a Value {
    dump["fleet"]["nodes"]
        .as_array()
        .expect("fleet.nodes")
        .iter()
        .find(|n| n["name"] == name)
        .unwrap_or_else(|| panic!("no node {name} in {:#}", dump["fleet"]))
}

/// Whether the dump shows every one of `names` with no certificate lagging.
fn none_lagging(dump: &Value, names: &[String]) -> bool {
    names.iter().all(|n| {
        node(dump, n)["lagging"]
            .as_array()
            .is_some_and(|l| l.is_empty())
    })
}

/// The stored serial of `id` as the dump shows it.
fn serial(dump: &Value, id: &str) -> String {
    dump["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .and_then(|c| c["serial"].as_str())
        .unwrap_or_else(|| panic!("no serial for {id}"))
        .to_string()
}

/// The value of gauge `line_prefix` (name and labels) in a `/metrics` text.
fn gauge(metrics: &str, line_prefix: &str) -> Option<i64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(line_prefix)?.strip_prefix(' ')?.parse().ok())
}

/// `Fleet::wait`, with every instance's `status` in the failure too.
fn wait(f: &Fleet, what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !ready() {
        if std::time::Instant::now() > deadline {
            let status: String = (0..f.nodes.len())
                .map(|i| text(&cli(f, i, &["status"])))
                .collect();
            panic!(
                "{what}: not after {timeout:?}\n{status}\nlogs:\n{}",
                f.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn status_dump_and_metrics_show_the_leader_and_a_lagging_node() {
    let mut f = Fleet::start(3, Options::default(), Duration::from_secs(3));
    f.dns_a(IDS[0], &["127.0.0.2"]);
    f.dns_a(IDS[1], &["127.0.0.3"]);
    for i in 0..3 {
        f.start_daemon(i, &domains());
    }
    let leader = f.wait_leader(Duration::from_secs(20));
    wait(
        &f,
        "every certificate on every node",
        Duration::from_secs(90),
        || f.all_served(&IDS),
    );
    let (follower, lagger) = ((leader + 1) % 3, (leader + 2) % 3);
    let names: Vec<String> = f.nodes.iter().map(|n| n.name.clone()).collect();
    let (_, epoch) = f.lease_holder();

    // Every node noted both certificates (just after serving them): current everywhere.
    wait(
        &f,
        "every node current in the dump",
        Duration::from_secs(30),
        || none_lagging(&dump(&f, follower), &names),
    );
    let d = dump(&f, follower);
    let fleet = &d["fleet"];
    assert_eq!(fleet["node"], names[follower].as_str(), "{fleet:#}");
    assert_eq!(fleet["leading"], false, "{fleet:#}");
    assert_eq!(
        fleet["lease"]["holder"],
        names[leader].as_str(),
        "{fleet:#}"
    );
    assert_eq!(fleet["lease"]["epoch"], epoch, "{fleet:#}");
    assert_eq!(fleet["lease"]["live"], true, "{fleet:#}");
    assert!(fleet["lease"]["since"].is_string(), "{fleet:#}");
    assert_eq!(fleet["nodes"].as_array().unwrap().len(), 3, "{fleet:#}");
    for n in &names {
        let v = node(&d, n);
        assert!(v["last_seen"].is_string(), "{n} seen: {v:#}");
        for id in IDS {
            assert_eq!(v["installed"][id], serial(&d, id), "{n}'s {id}: {v:#}");
        }
    }
    let leader_dump = dump(&f, leader);
    assert_eq!(leader_dump["fleet"]["leading"], true);
    assert_eq!(leader_dump["fleet"]["node"], names[leader].as_str());

    let status = ok(&f, follower, &["status"]);
    let since = fleet["lease"]["since"].as_str().unwrap();
    let lead_line = format!(
        "fleet: {} leads (epoch {epoch}) since {since}",
        names[leader]
    );
    assert!(status.contains(&lead_line), "{lead_line:?} in:\n{status}");
    assert!(
        status.contains(&format!("; this is {}", names[follower])),
        "{status}"
    );
    for n in &names {
        assert!(status.contains(&format!("{n} 2/2 current")), "{status}");
    }
    let m = daemon_metrics(&f.nodes[leader].data_dir);
    assert_eq!(gauge(&m, "haproxy_acme_fleet_leader"), Some(1), "{m}");
    assert_eq!(
        gauge(&m, "haproxy_acme_fleet_lease_epoch"),
        Some(epoch),
        "{m}"
    );
    assert_eq!(gauge(&m, "haproxy_acme_fleet_nodes"), Some(3), "{m}");
    let m = daemon_metrics(&f.nodes[follower].data_dir);
    assert_eq!(gauge(&m, "haproxy_acme_fleet_leader"), Some(0), "{m}");
    let lagging = |m: &str, i: usize| {
        gauge(
            m,
            &format!("haproxy_acme_fleet_node_lagging{{node=\"{}\"}}", names[i]),
        )
    };
    for i in 0..3 {
        assert_eq!(lagging(&m, i), Some(0), "{m}");
    }

    // One node's HAProxy down while a certificate is renewed: it lags on that one.
    // (The CA validates on a node that is up.)
    f.kill_haproxy(lagger);
    let up = f.nodes[follower].ip.clone();
    f.dns_a(IDS[0], &[&up]);
    let old = serial(&d, IDS[0]);
    let stored_old = f.stored_serial(IDS[0]);
    let out = ok(&f, leader, &["renew", "--force", IDS[0]]);
    println!("renew: {}", out.trim());
    wait(
        &f,
        "the renewed certificate on the others",
        Duration::from_secs(60),
        || f.stored_serial(IDS[0]) != stored_old && f.all_served(&IDS),
    );
    let lagging_one = |d: &Value| node(d, &names[lagger])["lagging"] == serde_json::json!([IDS[0]]);
    wait(
        &f,
        "the node shows as lagging",
        Duration::from_secs(30),
        || lagging_one(&dump(&f, follower)),
    );
    let d = dump(&f, follower);
    let new = serial(&d, IDS[0]);
    assert_ne!(new, old, "renewed");
    let v = node(&d, &names[lagger]);
    assert_eq!(
        v["installed"][IDS[0]],
        old.as_str(),
        "still the old one: {v:#}"
    );
    assert_eq!(v["installed"][IDS[1]], serial(&d, IDS[1]), "{v:#}");
    for i in [leader, follower] {
        let v = node(&d, &names[i]);
        assert_eq!(v["lagging"], serde_json::json!([]), "{v:#}");
        assert_eq!(v["installed"][IDS[0]], new.as_str(), "{v:#}");
    }
    let status = ok(&f, follower, &["status"]);
    println!("status while {} lags:\n{status}", names[lagger]);
    let behind = format!("{} 1/2 (behind: {})", names[lagger], IDS[0]);
    assert!(status.contains(&behind), "{behind:?} in:\n{status}");
    assert!(
        status.contains(&format!("{} 2/2 current", names[leader])),
        "{status}"
    );
    let m = daemon_metrics(&f.nodes[follower].data_dir);
    assert_eq!(lagging(&m, lagger), Some(1), "{m}");
    assert_eq!(lagging(&m, leader), Some(0), "{m}");
    assert_eq!(lagging(&m, follower), Some(0), "{m}");

    // Its HAProxy back: its instance installs the new one (trying every 2 s) and catches up.
    f.start_haproxy(lagger);
    wait(
        &f,
        "the node no longer lags",
        Duration::from_secs(30),
        || none_lagging(&dump(&f, follower), &names),
    );
    assert!(f.all_served(&IDS), "every node serves the stored ones");
    let m = daemon_metrics(&f.nodes[follower].data_dir);
    assert_eq!(lagging(&m, lagger), Some(0), "{m}");
    let status = ok(&f, follower, &["status"]);
    assert!(
        status.contains(&format!("{} 2/2 current", names[lagger])),
        "{status}"
    );
    assert_eq!(f.env.issued().len(), 3, "two issued and one renewal");
}
