//! The PostgreSQL harness (tests/common/pg.rs) against a real server: a private cluster on
//! 127.0.0.1 only, with fsync on, keeps a committed row across a crash (SIGKILL of the
//! postmaster while a client holds an open transaction, whose uncommitted row is gone after
//! recovery) and across a fast shutdown, each time on the same port and data directory. Fails
//! when PostgreSQL is not installed; never skips. Prints the time each start took.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::time::Instant;

use common::pg::Postgres;

#[test]
fn private_cluster_keeps_committed_rows_across_crash_and_restart() {
    let t = Instant::now();
    let mut pg = Postgres::start();
    let first_start = t.elapsed();
    let port = pg.port();
    let url = pg.url();
    assert_eq!(
        url,
        format!("postgres://postgres@127.0.0.1:{port}/postgres")
    );
    assert_ne!(port, 5432, "never the system cluster's port");

    // Its own cluster, configured as the harness says.
    assert_eq!(pg.psql("show listen_addresses"), "127.0.0.1");
    assert_eq!(pg.psql("show port"), port.to_string());
    assert_eq!(pg.psql("show fsync"), "on");
    assert_eq!(pg.psql("show max_connections"), "50");
    let data = pg.data_dir().canonicalize().unwrap();
    assert_eq!(
        std::path::Path::new(&pg.psql("show data_directory"))
            .canonicalize()
            .unwrap(),
        data
    );
    assert_eq!(pg.psql("select current_user"), "postgres");

    pg.psql("create table t (id int primary key, v text not null)");
    pg.psql("insert into t values (1, 'before the crash')");

    // A client holding an open transaction with an uncommitted row when the server dies.
    let mut session = pg
        .client("psql")
        .args(["-X", "-q", "-At"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = session.stdin.take().unwrap();
    let mut stdout = BufReader::new(session.stdout.take().unwrap());
    writeln!(
        stdin,
        "begin; insert into t values (99, 'never committed'); select 'inserted';"
    )
    .unwrap();
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "inserted", "the open session's insert ran");
    assert_eq!(
        pg.psql("select count(*) from pg_stat_activity where state = 'idle in transaction'"),
        "1"
    );

    // Crash: SIGKILL of the postmaster, no shutdown checkpoint; recovery replays the WAL.
    pg.kill();
    assert!(!pg.running());
    let down = pg.try_psql("select 1");
    assert!(down.is_err(), "a killed server answers: {down:?}");
    let t = Instant::now();
    pg.start_again();
    let after_crash = t.elapsed();
    assert_eq!(pg.port(), port);
    assert_eq!(pg.url(), url);
    assert!(
        pg.log().contains("was interrupted") || pg.log().contains("not properly shut down"),
        "the restart after the kill is a crash recovery: {}",
        pg.log()
    );
    assert_eq!(
        pg.psql("select id || ':' || v from t order by id"),
        "1:before the crash",
        "the committed row survives the crash, the uncommitted one does not"
    );
    let _ = session.kill();
    let _ = session.wait();

    pg.psql("insert into t values (2, 'after the crash')");

    // Fast shutdown and start again: same port, same rows, no recovery needed.
    pg.stop();
    assert!(pg.try_psql("select 1").is_err(), "a stopped server answers");
    let t = Instant::now();
    pg.start_again();
    let after_stop = t.elapsed();
    assert_eq!(
        pg.psql("select string_agg(id || ':' || v, ',' order by id) from t"),
        "1:before the crash,2:after the crash"
    );

    println!(
        "PostgreSQL ({}): new cluster (initdb + start) {:.0} ms; start after kill -9 (crash \
         recovery) {:.0} ms; start after fast shutdown {:.0} ms",
        pg.psql("show server_version"),
        first_start.as_secs_f64() * 1000.0,
        after_crash.as_secs_f64() * 1000.0,
        after_stop.as_secs_f64() * 1000.0,
    );
}
