//! Command-line interface: subcommands and the raw settings, each flag backed by an environment
//! variable (a flag wins over its variable). Only this module knows clap.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Gets and renews TLS certificates over ACME for the sites behind HAProxy, and installs them
/// through HAProxy's runtime API without a reload.
#[derive(Debug, Parser)]
#[command(name = "haproxy-acme", version, args_override_self = true)]
pub struct Cli {
    #[command(flatten)]
    pub settings: RawSettings,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: answer HTTP-01 challenges, issue, renew and install certificates.
    Run,
    /// Inspect the stored state.
    State {
        #[command(subcommand)]
        command: StateCommand,
    },
    /// One line per certificate: id, names, phase, expires in, renews in, last error (colour on
    /// a terminal). Above 100 certificates, a summary instead: counts by phase, the certificates
    /// that need attention (50 at most), the next renewals due. Works whether or not the daemon
    /// runs.
    Status {
        /// For cron and Nagios: a first line `HAPROXY-ACME OK|WARNING|UNKNOWN - ...`, then one
        /// line per problem (renewal failing, a third of the lifetime left with the renewal
        /// overdue, served ≠ stored). Exit 0: none; 1: attention needed; 2: invalid
        /// configuration; 3: neither the daemon nor the store can be read.
        #[arg(long)]
        check: bool,
        /// The line of every certificate, however many.
        #[arg(long, conflicts_with_all = ["check", "id"])]
        all: bool,
        /// Only this certificate's line (from the daemon's view: no store scan).
        #[arg(conflicts_with = "check")]
        id: Option<String>,
    },
    /// Validate the configuration and print it as JSON (exit code 2 and the errors if invalid).
    CheckConfig,
    /// Print the HAProxy frontend/backend snippet that matches the current settings.
    HaproxyConfig,
    /// Exit 0 if the daemon using DATA_DIR answers its health check, 1 otherwise (for a
    /// container HEALTHCHECK).
    Healthcheck,
    /// Renew certificate ID now if it is due, or say when it will be; `--force` renews it now
    /// regardless (the current certificate keeps serving). Exit 3: no such certificate.
    Renew {
        id: String,
        #[arg(long)]
        force: bool,
    },
    /// Revoke the current certificate of ID at the CA (RFC 8555 §7.6), then order a new one with
    /// a new key at once. With the daemon running, waits until the new certificate is served and
    /// prints both serials; without, the new one is ordered when the daemon starts. Exit 2: the
    /// CA refused (its words are printed); 3: no such certificate.
    Revoke {
        id: String,
        /// RFC 5280's reason: unspecified, keyCompromise, superseded, cessationOfOperation,
        /// affiliationChanged.
        #[arg(long, default_value = "unspecified", value_parser = [
            "unspecified", "keyCompromise", "superseded", "cessationOfOperation", "affiliationChanged",
        ])]
        reason: String,
        /// How long to wait for the new certificate to be issued and served, e.g. 90s, 10m.
        #[arg(long, default_value = "5m")]
        timeout: String,
    },
    /// Clear the recorded failure of certificate ID (a permanent one included) and try again now;
    /// runs a failed deploy hook again.
    Retry { id: String },
    /// Add or remove certificates at runtime (kept in the store; take effect at once).
    Domains {
        #[command(subcommand)]
        command: DomainsCommand,
    },
    /// Adopt certificates obtained by another client.
    Import {
        #[command(subcommand)]
        command: ImportCommand,
    },
    /// With the daemon stopped: recreate the store's records from the certificate files in
    /// CERTS_DIR (`<id>.pem`, key checked against the certificate, unexpired, wanted ids only),
    /// so nothing is ordered again. A damaged store is moved aside into DATA_DIR, never deleted.
    Rebuild,
    /// Write a snapshot of the store (every certificate, key and ACME account) to FILE, mode
    /// 0600; taken by the running daemon, or from the store when none runs.
    Backup { file: PathBuf },
    /// With the daemon stopped: replace the store with the snapshot in FILE (checked whole
    /// first); the current store is moved aside into DATA_DIR, never deleted.
    Restore { file: PathBuf },
    /// With the daemon stopped: copy the store in DATA_DIR (records, certificates and keys,
    /// accounts, the rate-limit ledger, runtime additions) into the empty PostgreSQL store of
    /// POSTGRES_URL (keys sealed with STORE_KEY_FILE), then read both back and compare them.
    /// Exit 2: refused (no POSTGRES_URL, the daemon holds the store, the target is not empty).
    MigrateStore,
    /// Print the standing TXT record(s) certificate ID (with `challenge=dns-persist-01`) needs
    /// for the configured CA and account (draft-ietf-acme-dns-persist): a zone-file line per
    /// name, `policy=wildcard` when the certificate has a wildcard. Registers the account if
    /// there is none yet. Create them once; they are never published or removed by us.
    DnsPersistRecord {
        id: String,
        /// The record's persistUntil: a date (2027-06-01 or 2027-06-01T00:00:00Z) or a
        /// duration from now (e.g. 365d); the CA refuses the record after it.
        #[arg(long)]
        until: Option<String>,
        /// Print JSON: [{"name", "value", "zone_line"}].
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum StateCommand {
    /// Print every certificate (or only ID) as JSON (no key material). Works whether or not the
    /// daemon runs.
    Dump { id: Option<String> },
}

#[derive(Debug, Subcommand)]
pub enum DomainsCommand {
    /// Add one certificate: its names, comma-separated, the first is its id, then any options
    /// (e.g. "a.com,www.a.com profile=shortlived"). Refused when a name is already wanted.
    Add { spec: String },
    /// Remove a certificate added with `domains add` (kept and no longer renewed; removed
    /// entirely with PRUNE=true).
    Remove { id: String },
}

#[derive(Debug, Subcommand)]
pub enum ImportCommand {
    /// Adopt the certificates and keys of a certbot configuration directory (e.g.
    /// /etc/letsencrypt) as issued: no new issuance, no rate limit spent.
    Certbot { dir: PathBuf },
}

/// Settings as given, before validation (see `config::Config::from_raw`).
#[derive(Debug, Clone, Default, Args)]
pub struct RawSettings {
    /// Certificates to obtain: `;` separates certificates, `,` the names of one certificate
    /// (the first name is its id). Example: "a.com,www.a.com;b.com".
    #[arg(long, env = "DOMAINS", global = true)]
    pub domains: Option<String>,
    /// A file with one certificate per line (DOMAINS syntax, `#` comments), watched: edits take
    /// effect without a restart. Also re-read on SIGHUP.
    #[arg(long, env = "DOMAINS_FILE", global = true)]
    pub domains_file: Option<PathBuf>,
    /// When a certificate leaves the configuration, also remove its file, its HAProxy entry and
    /// its state (default: keep them, stop renewing).
    #[arg(long, env = "PRUNE", global = true)]
    pub prune: bool,
    /// Local rate-limit budget: `auto` (default: Let's Encrypt's limits for Let's Encrypt
    /// directories, none otherwise), `off`, `lets-encrypt`, or a list such as
    /// `orders=300/3h,exact-set=5/7d,registered-domain=50/7d,failed-validations=5/1h`.
    #[arg(long, env = "RATE_LIMITS", global = true)]
    pub rate_limits: Option<String>,
    /// How many certificates are worked on at once (1 to 256, default 8). Orders stay inside
    /// RATE_LIMITS whatever the number: admission to the budget is one at a time.
    #[arg(long, env = "CONCURRENCY", global = true)]
    pub concurrency: Option<String>,
    /// Log format: `text` (default; coloured on a terminal) or `json` (one object per line).
    #[arg(long, env = "LOG_FORMAT", global = true, value_parser = ["text", "json"])]
    pub log_format: Option<String>,
    /// ACME account contact e-mail.
    #[arg(long, env = "EMAIL", global = true)]
    pub email: Option<String>,
    /// External Account Binding key id, from the CA (with EAB_HMAC_KEY or EAB_HMAC_KEY_FILE);
    /// sent only when the account is created.
    #[arg(long, env = "EAB_KID", global = true)]
    pub eab_kid: Option<String>,
    /// External Account Binding HMAC key (base64url, as the CA gives it). Never printed;
    /// EAB_HMAC_KEY_FILE keeps it out of the environment.
    #[arg(long, env = "EAB_HMAC_KEY", global = true, hide_env_values = true)]
    pub eab_hmac_key: Option<crate::config::eab::SecretString>,
    /// A file holding the External Account Binding HMAC key (a container secret).
    #[arg(long, env = "EAB_HMAC_KEY_FILE", global = true)]
    pub eab_hmac_key_file: Option<PathBuf>,
    /// Use the Let's Encrypt staging directory (also accepted in OPTIONS, as with certbot).
    #[arg(long, global = true)]
    pub staging: bool,
    /// Host of the HAProxy service; HAPROXY_RUNTIME_API may then give just a port.
    #[arg(long, env = "LOAD_BALANCER_SERVICE_NAME", global = true)]
    pub load_balancer_service_name: Option<String>,
    /// ACME directory URL [default: Let's Encrypt production].
    #[arg(long, env = "ACME_DIRECTORY", global = true)]
    pub acme_directory: Option<String>,
    /// PEM file of extra root certificates to trust when talking to the CA.
    #[arg(long, env = "ACME_CA_BUNDLE", global = true)]
    pub acme_ca_bundle: Option<PathBuf>,
    /// Private key type: ecdsa-p256 (default), ecdsa-p384, rsa2048, rsa4096.
    #[arg(long, env = "KEY_TYPE", global = true)]
    pub key_type: Option<String>,
    /// Directory of the state store and keys [default: /var/lib/haproxy-acme].
    #[arg(long, env = "DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// Directory HAProxy's `crt` points at [default: /etc/haproxy/certs].
    #[arg(long, env = "CERTS_DIR", global = true)]
    pub certs_dir: Option<PathBuf>,
    /// CERTS_DIR as HAProxy sees it, when it mounts the directory elsewhere [default: CERTS_DIR].
    #[arg(long, env = "HAPROXY_CERTS_DIR", global = true)]
    pub haproxy_certs_dir: Option<PathBuf>,
    /// HAProxy runtime API: `unix:/path`, `host:port`, or a port on LOAD_BALANCER_SERVICE_NAME.
    /// Unset: write certificate files only.
    #[arg(long, env = "HAPROXY_RUNTIME_API", global = true)]
    pub haproxy_runtime_api: Option<String>,
    /// Also serve the admin endpoint (state, status, /healthz, /metrics; read-only) on this TCP
    /// address, e.g. 127.0.0.1:9120 for Prometheus. Loopback only unless
    /// ADMIN_LISTEN_NON_LOOPBACK=true. Commands that change anything stay on the unix socket.
    #[arg(long, env = "ADMIN_LISTEN", global = true)]
    pub admin_listen: Option<String>,
    /// Allow ADMIN_LISTEN on a non-loopback address (it serves the state and metrics unencrypted
    /// and unauthenticated: put it on a private network only).
    #[arg(long, env = "ADMIN_LISTEN_NON_LOOPBACK", global = true)]
    pub admin_listen_non_loopback: bool,
    /// Shell command run (`sh -c`) after each new certificate is installed, with certbot's
    /// variables: RENEWED_LINEAGE (a directory with cert.pem, chain.pem, fullchain.pem,
    /// privkey.pem) and RENEWED_DOMAINS (space-separated names).
    #[arg(long, env = "DEPLOY_HOOK", global = true)]
    pub deploy_hook: Option<String>,
    /// How long the deploy hook may run before it is killed and recorded as failed, e.g. 60s,
    /// 5m [default: 60s].
    #[arg(long, env = "DEPLOY_HOOK_TIMEOUT", global = true)]
    pub deploy_hook_timeout: Option<String>,
    /// Shell command run (`sh -c`) to publish each DNS-01 TXT record of a certificate with
    /// `challenge=dns-01`, with certbot's manual-hook variables: CERTBOT_DOMAIN (the name, no
    /// `*.`), CERTBOT_VALIDATION (the TXT value for `_acme-challenge.CERTBOT_DOMAIN`),
    /// CERTBOT_TOKEN, CERTBOT_REMAINING_CHALLENGES, CERTBOT_ALL_DOMAINS. The CA is told to
    /// validate once it exits 0 (wait for propagation inside it).
    #[arg(long, env = "DNS_HOOK", global = true)]
    pub dns_hook: Option<String>,
    /// Shell command run (`sh -c`) to remove each TXT record DNS_HOOK published, after
    /// validation (and at the next start for records a crash left), with the same variables and
    /// CERTBOT_AUTH_OUTPUT (DNS_HOOK's standard output; empty after a restart).
    #[arg(long, env = "DNS_CLEANUP_HOOK", global = true)]
    pub dns_cleanup_hook: Option<String>,
    /// How long DNS_HOOK or DNS_CLEANUP_HOOK may run before it is killed and counted as failed,
    /// e.g. 120s, 10m [default: 5m].
    #[arg(long, env = "DNS_HOOK_TIMEOUT", global = true)]
    pub dns_hook_timeout: Option<String>,
    /// host:port of the DNS server (the zone's primary) that takes RFC 2136 dynamic updates for
    /// the DNS-01 TXT records of certificates with `challenge=dns-01` (port 53 if not given).
    /// With it set, DNS_HOOK is not used.
    #[arg(long, env = "DNS_UPDATE_SERVER", global = true)]
    pub dns_update_server: Option<String>,
    /// Name of the TSIG key the updates are signed with.
    #[arg(long, env = "DNS_TSIG_KEY_NAME", global = true)]
    pub dns_tsig_key_name: Option<String>,
    /// TSIG algorithm: hmac-sha256 (default) or hmac-sha512.
    #[arg(long, env = "DNS_TSIG_ALGORITHM", global = true)]
    pub dns_tsig_algorithm: Option<String>,
    /// The TSIG key's secret (base64, as tsig-keygen prints it). Never printed;
    /// DNS_TSIG_SECRET_FILE keeps it out of the environment.
    #[arg(long, env = "DNS_TSIG_SECRET", global = true, hide_env_values = true)]
    pub dns_tsig_secret: Option<crate::config::eab::SecretString>,
    /// A file holding the TSIG key's secret (a container secret).
    #[arg(long, env = "DNS_TSIG_SECRET_FILE", global = true)]
    pub dns_tsig_secret_file: Option<PathBuf>,
    /// How long every authoritative server of the zone has to answer a published TXT record
    /// before the CA is told to validate, e.g. 60s, 5m [default: 60s].
    #[arg(long, env = "DNS_PROPAGATION_TIMEOUT", global = true)]
    pub dns_propagation_timeout: Option<String>,
    /// The port the zone's authoritative servers (its NS records) are asked on [default: 53].
    #[arg(long, env = "DNS_AUTHORITATIVE_PORT", global = true)]
    pub dns_authoritative_port: Option<String>,
    /// host:port of the resolver asked for the zone and NS servers of a dns-persist-01 record
    /// before it is read at each authoritative server [default: DNS_UPDATE_SERVER, else the
    /// first nameserver of /etc/resolv.conf].
    #[arg(long, env = "DNS_RESOLVER", global = true)]
    pub dns_resolver: Option<String>,
    /// The issuer-domain-name dns-persist-01 records name [default: the first of the CA
    /// directory's meta.caaIdentities, e.g. letsencrypt.org, or pebble.letsencrypt.org].
    #[arg(long, env = "DNS_PERSIST_ISSUER", global = true)]
    pub dns_persist_issuer: Option<String>,
    /// A fleet: the PostgreSQL store every instance (one beside each HAProxy node) shares,
    /// e.g. `postgres://haproxy_acme:PASSWORD@db.internal/haproxy_acme` (or libpq's key=value
    /// form). Unset: the sled store in DATA_DIR (one machine). Its password is never printed.
    #[arg(long, env = "POSTGRES_URL", global = true, hide_env_values = true)]
    pub postgres_url: Option<crate::config::eab::SecretString>,
    /// The file with the key (32 bytes: 64 hex digits, base64 or raw) that encrypts the private
    /// keys in the PostgreSQL store; the same file on every instance (`openssl rand -hex 32`).
    #[arg(long, env = "STORE_KEY_FILE", global = true)]
    pub store_key_file: Option<PathBuf>,
    /// This instance's name in a fleet (the lease holder, each node's installed certificates)
    /// [default: the host name].
    #[arg(long, env = "NODE_NAME", global = true)]
    pub node_name: Option<String>,
    /// How long the leader's lease lasts without renewal: a follower takes over this long after
    /// the leader stops (renewed every third of it) [default: 15s].
    #[arg(long, env = "LEASE_TIME", global = true)]
    pub lease_time: Option<String>,
    /// How often HAProxy is asked which certificate it serves for each one (and each file read);
    /// one that is not the stored one is installed again and counted. A duration, e.g. 5m
    /// [default: 5m, with up to 10 % jitter]; `off` never checks.
    #[arg(long, env = "WATCHDOG_INTERVAL", global = true)]
    pub watchdog_interval: Option<String>,
    /// Which certificates get per-certificate series in /metrics (expiry, renewal, ready,
    /// failures...: 5 series each): `auto` (default: every one up to 10,000 certificates, above
    /// only those that need attention), `all`, or `attention`. The aggregates (certificates by
    /// phase, by condition, the earliest expiry) are always there.
    #[arg(long, env = "METRICS_PER_CERTIFICATE", global = true)]
    pub metrics_per_certificate: Option<String>,
    /// Shell command run (`sh -c`) when a certificate starts or stops needing attention (the
    /// conditions of `status --check`), once per transition, with ALERT_ID, ALERT_NAMES,
    /// ALERT_STATE (`attention` or `ok`), ALERT_CONDITIONS, ALERT_PREVIOUS and ALERT_MESSAGE.
    /// Killed after 60 s.
    #[arg(long, env = "ALERT_HOOK", global = true)]
    pub alert_hook: Option<String>,
    /// Address of the HTTP-01 challenge responder [default: 0.0.0.0:80].
    #[arg(long, env = "RESPONDER_LISTEN", global = true)]
    pub responder_listen: Option<String>,
    /// Address of the TLS-ALPN-01 responder (RFC 8737), which HAProxy's :443 sends handshakes
    /// offering ALPN `acme-tls/1` to, e.g. 127.0.0.1:8403. Unset: off (certificates with
    /// `challenge=tls-alpn-01` are refused).
    #[arg(long, env = "TLS_ALPN_LISTEN", global = true)]
    pub tls_alpn_listen: Option<String>,
    /// The ACME profile orders ask for (e.g. Let's Encrypt's `classic`, `tlsserver`,
    /// `shortlived`), unless a certificate names its own (`profile=NAME` in its DOMAINS entry).
    /// Checked at start against the profiles the CA's directory offers. Unset: the CA's default.
    #[arg(long, env = "ACME_PROFILE", global = true)]
    pub acme_profile: Option<String>,
    /// `on` (default): before the CA is told a challenge is ready, it is fetched the CA's way
    /// (HTTP-01: the token from the name's address through HAProxy); a failure is a retried
    /// local failure that costs no CA request. `off` for networks that cannot reach their own
    /// public address.
    #[arg(long, env = "PREFLIGHT", global = true)]
    pub preflight: Option<String>,
    /// host:port where HTTP-01's preflight connects instead of each name's own address (port
    /// 80 if not given), e.g. HAProxy's address as seen from this host.
    #[arg(long, env = "PREFLIGHT_HTTP_ADDRESS", global = true)]
    pub preflight_http_address: Option<String>,
    /// host:port where TLS-ALPN-01's preflight handshakes instead of each name's own address
    /// (port 443 if not given).
    #[arg(long, env = "PREFLIGHT_TLS_ADDRESS", global = true)]
    pub preflight_tls_address: Option<String>,
}

impl RawSettings {
    /// DATA_DIR as set, or its default (what `Config::from_raw` takes).
    pub fn data_dir_or_default(&self) -> PathBuf {
        self.data_dir
            .clone()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| crate::config::settings::DEFAULT_DATA_DIR.into())
    }

    /// Whether POSTGRES_URL is set: a fleet, whose store is not in DATA_DIR.
    pub fn is_fleet(&self) -> bool {
        self.postgres_url
            .as_ref()
            .is_some_and(|u| !u.expose().trim().is_empty())
    }
}

/// Parses the command line. `options` is the content of the `OPTIONS` variable (the old stack's
/// extra flags, e.g. `--staging`): its words are inserted before the real arguments, so a flag
/// given on the command line still wins.
pub fn parse(args: Vec<OsString>, options: Option<&str>) -> Result<Cli, clap::Error> {
    let mut argv = args.into_iter();
    let mut full: Vec<OsString> = argv.next().into_iter().collect();
    if let Some(o) = options {
        full.extend(o.split_whitespace().map(OsString::from));
    }
    full.extend(argv);
    Cli::try_parse_from(full)
}

/// What clap's error leaves out when a value came from the environment: which variable is not
/// UTF-8 (clap says only "invalid UTF-8 was detected"), or that an invalid `--flag` value is
/// the variable's. `env` looks a variable up (`std::env::var_os` in `main`).
pub fn explain_env(e: &clap::Error, env: impl Fn(&str) -> Option<OsString>) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let cmd = <Cli as clap::CommandFactory>::command();
    let args: Vec<&clap::Arg> = cmd.get_arguments().collect();
    let var = |a: &clap::Arg| a.get_env().and_then(|v| v.to_str()).map(String::from);
    match e.kind() {
        ErrorKind::InvalidUtf8 => {
            let bad: Vec<String> = args
                .iter()
                .filter(|a| a.get_value_parser().type_id() != std::any::TypeId::of::<PathBuf>())
                .filter_map(|a| var(a))
                .filter(|v| env(v).is_some_and(|value| value.to_str().is_none()))
                .collect();
            (!bad.is_empty()).then(|| format!("not UTF-8: {}", bad.join(", ")))
        }
        ErrorKind::InvalidValue | ErrorKind::ValueValidation => {
            let Some(ContextValue::String(flag)) = e.get(ContextKind::InvalidArg) else {
                return None;
            };
            let long = flag.split_whitespace().next()?.strip_prefix("--")?;
            let arg = args.iter().find(|a| a.get_long() == Some(long))?;
            let name = var(arg)?;
            env(&name).map(|_| {
                format!("(the value of --{long} comes from the environment variable {name})")
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn options_add_flags_before_the_command_line() {
        let cli = parse(
            args(&["haproxy-acme", "check-config"]),
            Some("  --staging "),
        )
        .unwrap();
        assert!(cli.settings.staging);
        let cli = parse(
            args(&["haproxy-acme", "check-config", "--key-type", "rsa2048"]),
            Some("--key-type ecdsa-p384"),
        )
        .unwrap();
        assert_eq!(
            cli.settings.key_type.as_deref(),
            Some("rsa2048"),
            "the command line wins"
        );
        assert!(parse(args(&["haproxy-acme", "run"]), Some("--bogus")).is_err());
    }

    #[test]
    fn errors_about_environment_values_name_the_variable() {
        use std::os::unix::ffi::OsStringExt;
        let env = |name: &str| match name {
            "EMAIL" => Some(OsString::from_vec(vec![0xff, b'@'])),
            "DATA_DIR" => Some(OsString::from_vec(vec![b'/', 0xff])),
            _ => None,
        };
        let e = Cli::try_parse_from([
            OsString::from("haproxy-acme"),
            "run".into(),
            "--email".into(),
            OsString::from_vec(vec![0xff]),
        ])
        .unwrap_err();
        // A non-UTF-8 path is a path; only the text settings are named.
        assert_eq!(explain_env(&e, env).as_deref(), Some("not UTF-8: EMAIL"));
        assert_eq!(explain_env(&e, |_| None), None);
    }
}
