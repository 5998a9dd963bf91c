//! Configuration, validated once at start-up; only validated types travel past it.
//!
//! - [`settings`]: raw settings (flags and environment) → [`Config`]: the CA, directories,
//!   HAProxy's runtime API, rate limits, the deploy hook... and the one duration syntax
//!   ([`parse_duration`]). All problems are reported at once ([`ConfigError`]).
//! - [`wanted`]: the wanted set ([`WantedSet`]): `DOMAINS` (parsed once), `DOMAINS_FILE` (read
//!   again at each reload) and the certificates added at runtime → [`CertSpec`]s.
//! - [`options`]: a certificate entry's `key=value` options (`profile=NAME`).
//! - [`profiles`]: the checks of the configured ACME profiles (offered by the CA, Let's
//!   Encrypt's 25-name limit).
//! - [`eab`]: External Account Binding (`EAB_KID`, `EAB_HMAC_KEY`, `EAB_HMAC_KEY_FILE`); the
//!   HMAC key never prints.
//! - [`dns_update`]: DNS-01 by RFC 2136 (`DNS_UPDATE_SERVER`, the TSIG key settings); the
//!   secret never prints.
//! - [`dns_persist`]: the read-only check of dns-persist-01 records (`DNS_RESOLVER`,
//!   `DNS_PERSIST_ISSUER`).
//! - [`fleet`]: a fleet sharing a PostgreSQL store (`POSTGRES_URL`, `STORE_KEY_FILE`,
//!   `NODE_NAME`, `LEASE_TIME`); the URL's password never prints.
//! - [`names`]: name normalization (`idna`) and the types only it builds: [`CertId`], [`Names`].
//!
//! [`Config::from_raw`] returns both the settings and the wanted set.

pub mod dns_persist;
pub mod dns_update;
pub mod eab;
pub mod fleet;
pub mod names;
mod options;
pub mod profiles;
pub mod settings;
pub mod wanted;

pub use names::{cert_file_name, normalize_name, CertId, CertSpec, Names};
pub use settings::{
    parse_duration, Config, ConfigError, Need, RuntimeApiAddr, DEFAULT_CONCURRENCY,
    LETSENCRYPT_PRODUCTION, LETSENCRYPT_STAGING,
};
pub use wanted::{nothing_to_manage, parse_domains, parse_domains_file, WantedSet};

/// What `check-config` prints: the certificates read at start-up, then the settings (the JSON
/// `Config` printed when it held the certificates).
#[derive(serde::Serialize)]
pub struct Checked<'a> {
    pub certificates: &'a [CertSpec],
    #[serde(flatten)]
    pub config: &'a Config,
}

impl<'a> Checked<'a> {
    pub fn new(config: &'a Config, wanted: &'a WantedSet) -> Checked<'a> {
        Checked {
            certificates: wanted.initial(),
            config,
        }
    }
}
