//! The CA's directory read on its own at start-up, for the profiles it offers (`meta.profiles`,
//! draft-aaron-acme-profiles): the configured ones are checked before anything is ordered; and
//! for the names the CA calls itself (`meta.caaIdentities`, RFC 8555 §7.1.1): the
//! issuer-domain-name of a dns-persist-01 record.

use std::collections::BTreeMap;
use std::time::Duration;

use instant_acme::BodyWrapper;

use super::http::http_client;
use crate::config::profiles::unoffered_errors;
use crate::config::{CertSpec, Config, ConfigError};

/// How long the start-up check waits for the directory before going on without it.
const DIRECTORY_TIMEOUT: Duration = Duration::from_secs(10);

/// The profiles the directory at ACME_DIRECTORY offers (name → description); `None` when it
/// offers none. The error says why the directory could not be read.
pub async fn offered_profiles(config: &Config) -> Result<Option<BTreeMap<String, String>>, String> {
    profiles_of(&fetch(config).await?)
}

/// `meta.caaIdentities` of the directory at ACME_DIRECTORY (empty when it lists none): the
/// domain names the CA recognizes as itself, which pebble (its `caaIdentities` setting, by
/// default `pebble.letsencrypt.org`) also offers as a dns-persist-01 challenge's
/// `issuer-domain-names`; Let's Encrypt lists `letsencrypt.org`.
pub async fn caa_identities(config: &Config) -> Result<Vec<String>, String> {
    Ok(meta_of(&fetch(config).await?)?.caa_identities)
}

/// The directory document's bytes (GET ACME_DIRECTORY, 10 s at most).
async fn fetch(config: &Config) -> Result<Vec<u8>, String> {
    let client = http_client(config.acme_ca_bundle.as_deref()).map_err(|e| e.message)?;
    let request = hyper::Request::builder()
        .method(hyper::Method::GET)
        .uri(&config.acme_directory)
        // RFC 8555 §6.1: every request names its client (pebble refuses one that does not).
        .header(
            hyper::header::USER_AGENT,
            concat!("haproxy-acme/", env!("CARGO_PKG_VERSION")),
        )
        .body(BodyWrapper::default())
        .map_err(|e| e.to_string())?;
    let fetch = async {
        let mut rsp = client.request(request).await.map_err(|e| e.to_string())?;
        let status = rsp.parts.status;
        let body = rsp.body.into_bytes().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("HTTP {status}"));
        }
        Ok(body.to_vec())
    };
    tokio::time::timeout(DIRECTORY_TIMEOUT, fetch)
        .await
        .map_err(|_| format!("no answer within {}s", DIRECTORY_TIMEOUT.as_secs()))?
}

/// The `meta` fields of a directory document we read (all empty when it has none).
#[derive(Default, serde::Deserialize)]
struct Meta {
    #[serde(default)]
    profiles: Option<BTreeMap<String, String>>,
    #[serde(default, rename = "caaIdentities")]
    caa_identities: Vec<String>,
}

fn meta_of(directory: &[u8]) -> Result<Meta, String> {
    #[derive(serde::Deserialize)]
    struct Directory {
        #[serde(default)]
        meta: Option<Meta>,
    }
    let d: Directory =
        serde_json::from_slice(directory).map_err(|e| format!("not an ACME directory: {e}"))?;
    Ok(d.meta.unwrap_or_default())
}

/// `meta.profiles` of a directory document.
fn profiles_of(directory: &[u8]) -> Result<Option<BTreeMap<String, String>>, String> {
    Ok(meta_of(directory)?.profiles.filter(|p| !p.is_empty()))
}

/// The start-up check of the configured profiles (ACME_PROFILE and each certificate's own)
/// against the directory: a profile it does not offer is a configuration error naming those it
/// does. No profile configured: the CA is not asked. A directory that cannot be read is logged
/// and let pass (the daemon waits for the CA as always; the CA's `invalidProfile` at order time
/// is then the safety net).
pub async fn check_profiles(config: &Config, specs: &[CertSpec]) -> Result<(), ConfigError> {
    if config.acme_profile.is_none() && specs.iter().all(|s| s.profile().is_none()) {
        return Ok(());
    }
    match offered_profiles(config).await {
        Err(e) => {
            tracing::warn!(directory = %config.acme_directory, error = %e, "the CA's directory could not be read to check the configured profiles; an unknown one fails at order time");
            Ok(())
        }
        Ok(offered) => {
            let errors = unoffered_errors(offered.as_ref(), config.acme_profile.as_deref(), specs);
            if errors.is_empty() {
                let offered: Vec<&String> = offered.iter().flat_map(|o| o.keys()).collect();
                tracing::info!(offered = ?offered, "the configured profiles are offered by the CA");
                Ok(())
            } else {
                Err(ConfigError(errors))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_profiles_are_read_from_the_directory() {
        let pebble = br#"{"newOrder":"https://x/order","meta":{"externalAccountRequired":false,
            "profiles":{"default":"The profile you know and love","shortlived":"A short-lived cert profile"}}}"#;
        let p = profiles_of(pebble).unwrap().unwrap();
        assert_eq!(p.keys().collect::<Vec<_>>(), ["default", "shortlived"]);
        assert_eq!(profiles_of(br#"{"meta":{}}"#).unwrap(), None);
        assert_eq!(profiles_of(br#"{"newOrder":"x"}"#).unwrap(), None);
        assert_eq!(profiles_of(br#"{"meta":{"profiles":{}}}"#).unwrap(), None);
        assert!(profiles_of(b"<html>")
            .unwrap_err()
            .contains("not an ACME directory"));
    }
}
