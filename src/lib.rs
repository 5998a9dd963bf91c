//! haproxy-acme: gets and renews TLS certificates over ACME for the sites behind HAProxy and
//! installs them through HAProxy's runtime API, without a reload.
//!
//! # Layout
//! - `haproxy-acme-state` (the `state/` crate): the lifecycle as data and a pure transition
//!   function; it decides, the modules here do.
//! - [`cli`]: command line and raw settings (flags backed by environment variables).
//! - [`config`]: validation of the raw settings into one typed [`config::Config`] and the wanted
//!   set ([`config::WantedSet`]: DOMAINS, DOMAINS_FILE, runtime additions); certificate names.
//! - [`store`]: the sled store (records, chains, keys, account); the only module that knows the
//!   on-disk encoding.
//! - [`responder`]: the HTTP-01 challenge server.
//! - [`acme`]: the ACME client (instant-acme).
//! - [`pki`]: keys, CSRs, certificate parsing, every PEM text (rcgen, x509-parser, pem).
//! - [`installer`]: certificate files and HAProxy's runtime API.
//! - [`reconciler`]: the loop that drives every certificate through the lifecycle.
//! - [`admin`]: the admin endpoint (unix socket, optional loopback TCP) the CLI talks to while
//!   the daemon runs.
//! - [`ops`]: operator commands (renew, retry, domains add/remove), on the daemon or the store.
//! - [`metrics`]: Prometheus metrics.
//! - [`hook`]: the deploy hook (certbot's variables).
//! - [`import`]: adopting certificates from a certbot directory.
//! - [`budget`]: the local rate-limit budget (ledger in the store, registered domains by psl).
//! - [`signals`]: SIGTERM/SIGINT (shutdown) and SIGHUP (reload).
//! - [`watch`]: DOMAINS_FILE changes (notify).
//! - [`haproxy_snippet`]: the HAProxy configuration printed by `haproxy-config`.

pub mod acme;
pub mod admin;
pub mod budget;
pub mod cli;
pub mod config;
pub mod haproxy_snippet;
pub mod hook;
pub mod import;
pub mod installer;
pub mod metrics;
pub mod ops;
pub mod pki;
pub mod reconciler;
pub mod responder;
pub mod signals;
pub mod store;
pub mod watch;
