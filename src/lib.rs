//! haproxy-acme: gets and renews TLS certificates over ACME for the sites behind HAProxy and
//! installs them through HAProxy's runtime API, without a reload.
//!
//! # Layout
//! - `haproxy-acme-state` (the `state/` crate): the lifecycle as data and a pure transition
//!   function; it decides, the modules here do.
//! - [`daemon`]: `run`'s start-up and shutdown: which part starts when, with what.
//! - [`commands`]: the CLI's other commands (through the admin socket, or on the store).
//! - [`cli`]: command line and raw settings (flags backed by environment variables).
//! - [`config`]: validation of the raw settings into one typed [`config::Config`] and the wanted
//!   set ([`config::WantedSet`]: DOMAINS, DOMAINS_FILE, runtime additions); certificate names.
//! - [`store`]: the `Store` trait (records, chains, keys, account, ledger, runtime additions;
//!   one `update` per record change) and its backends (sled; PostgreSQL for a fleet, with the
//!   lease; in-memory for the simulation).
//! - [`fleet`]: one instance per HAProxy node on a shared PostgreSQL store: the lease holder
//!   runs the reconciler (fenced), every instance answers challenges and installs certificates.
//! - [`responder`]: the HTTP-01 challenge server.
//! - [`acme`]: the `Ca` trait and its instant-acme implementation.
//! - [`pki`]: keys, CSRs, certificate parsing, every PEM text (rcgen, x509-parser, pem).
//! - [`installer`]: the `Haproxy` trait: certificate files and HAProxy's runtime API.
//! - [`watchdog`]: what HAProxy serves and the files hold (batched `show ssl cert`), for the
//!   reconciler's watchdog.
//! - [`reconciler`]: the loop that drives every certificate through the lifecycle.
//! - [`clock`]: time and random draws (system, or tokio's paused clock and a seed in tests).
//! - [`health`]: what `/healthz` reports.
//! - [`admin`]: the admin endpoint (unix socket, optional loopback TCP) the CLI talks to while
//!   the daemon runs.
//! - [`ops`]: operator commands (renew, retry, domains add/remove), on the daemon or the store.
//! - [`revoke`]: `revoke`: revocation at the CA, recorded so a new certificate is ordered.
//! - [`metrics`]: Prometheus metrics.
//! - [`hook`]: the deploy hook (certbot's variables).
//! - [`import`]: adopting certificates from a certbot directory.
//! - [`recovery`]: a lost or damaged store: the start-up check, `rebuild`, `backup`, `restore`.
//! - [`budget`]: the local rate-limit budget (ledger in the store, registered domains by psl).
//! - [`signals`]: SIGTERM/SIGINT (shutdown) and SIGHUP (reload).
//! - [`watch`]: DOMAINS_FILE changes (notify).
//! - [`dns_persist`]: dns-persist-01: the standing `_validation-persist` record (printed by
//!   `dns-persist-record`, read at the zone's authoritative servers before the CA is told).
//! - [`haproxy_snippet`]: the HAProxy configuration printed by `haproxy-config`.

pub mod acme;
pub mod admin;
pub mod budget;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod dns_hook;
pub mod dns_persist;
pub mod dns_update;
pub mod fleet;
pub mod haproxy_snippet;
pub mod health;
pub mod hook;
pub mod import;
pub mod installer;
pub mod memory;
pub mod metrics;
pub mod ops;
pub mod pki;
pub mod preflight;
pub mod reconciler;
pub mod recovery;
pub mod responder;
pub mod revoke;
pub mod signals;
pub mod store;
pub mod watch;
pub mod watchdog;
