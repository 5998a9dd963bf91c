//! The new-account request (RFC 8555 §7.3), written here: signed (ES256) with the account key
//! we stored before sending it, carrying the contact (`EMAIL`) and the External Account Binding
//! (§7.3.4, HS256) in that one request; instant-acme's new-account takes a contact and an EAB
//! only with a key it generates itself. The account is then restored in instant-acme from its
//! URL and key ([`AccountCredentials`]), which signs everything else (and computes the same
//! RFC 7638 thumbprint for key authorizations: the same key).

use base64::prelude::{Engine, BASE64_URL_SAFE_NO_PAD as B64};
use haproxy_acme_state::{FailureKind, Step};
use hyper::body::Bytes;
use instant_acme::{Account, AccountCredentials, BodyWrapper, HttpClient};
use serde::Deserialize;

use super::http::http_client;
use super::problem::BAD_NONCE_RETRIES;
use super::AcmeError;
use crate::config::Config;
use jws::{new_account_jws, AccountKey};

mod jws;

/// How many new-account requests one registration sends at most while the CA answers
/// `badNonce`: the 3 × (1 + [`BAD_NONCE_RETRIES`]) an instant-acme call gets through
/// `nonce_retry!` (instant-acme's own 3 attempts each), so the bound of `problem.rs` holds.
const ATTEMPTS: u32 = 3 * (BAD_NONCE_RETRIES + 1);

const USER_AGENT: &str = concat!("haproxy-acme/", env!("CARGO_PKG_VERSION"));

/// What a CA that requires External Account Binding gets told when none is configured.
pub(crate) const EAB_MISSING: &str = "the CA requires External Account Binding \
    (externalAccountRequired) and none is configured: set EAB_KID and EAB_HMAC_KEY (or \
    EAB_HMAC_KEY_FILE) to the key id and HMAC key from your account at the CA";

/// An account registered (or found: the CA knew the key) with the new-account request.
pub(super) struct Registered {
    pub account: Account,
    /// The credentials to store (instant-acme's `AccountCredentials` JSON).
    pub credentials: Vec<u8>,
    /// The contacts of the account object the CA returned.
    pub contact: Vec<String>,
    /// 201: created now; 200: the CA already had an account for this key.
    pub created: bool,
}

/// Sends the new-account request for the PKCS#8 P-256 key `der` (already stored), with
/// `EMAIL` as contact and the configured EAB, then restores the account in instant-acme.
/// A `badNonce` is answered by sending it again with the nonce the refusal carries.
pub(super) async fn register(config: &Config, der: &[u8]) -> Result<Registered, AcmeError> {
    let step = Step::Account;
    let key = AccountKey::from_pkcs8(der).map_err(|e| {
        AcmeError::new(
            step,
            FailureKind::Retryable,
            format!("stored account key is unreadable: {e}"),
        )
    })?;
    let http = http_client(config.acme_ca_bundle.as_deref())?;
    let (_, body) = send(
        http.as_ref(),
        request("GET", &config.acme_directory, None),
        "the ACME directory",
    )
    .await?;
    let directory: Directory = serde_json::from_slice(&body).map_err(|e| {
        AcmeError::new(
            step,
            FailureKind::Retryable,
            format!(
                "the ACME directory {} is not a directory: {e}",
                config.acme_directory
            ),
        )
    })?;
    if directory.meta.external_account_required && config.eab.is_none() {
        return Err(AcmeError::new(step, FailureKind::Permanent, EAB_MISSING));
    }
    let contact = config.email.as_deref().map(|e| format!("mailto:{e}"));
    let mut nonce = None;
    let mut attempt = 0;
    let (parts, body) = loop {
        attempt += 1;
        let n = match nonce.take() {
            Some(n) => n,
            None => new_nonce(http.as_ref(), &directory.new_nonce).await?,
        };
        let jws = new_account_jws(
            &key,
            &n,
            &directory.new_account,
            contact.as_deref(),
            config.eab.as_ref(),
        )
        .map_err(|e| AcmeError::new(step, FailureKind::Retryable, e))?;
        let body = serde_json::to_vec(&jws).expect("a JWS serializes");
        let req = request("POST", &directory.new_account, Some(body));
        let rsp = http
            .request(req)
            .await
            .map_err(|e| AcmeError::from_acme(step, e))?;
        let (parts, body) = into_parts(rsp, step).await?;
        if parts.status.is_success() {
            break (parts, body);
        }
        let problem = problem_of(&parts, &body);
        if super::problem::is_bad_nonce_problem(&problem) && attempt < ATTEMPTS {
            nonce = replay_nonce(&parts);
            tracing::debug!(attempt, "badNonce: sending the new-account request again");
            continue;
        }
        return Err(refused(problem, config.eab.is_some()));
    };
    let url = parts
        .headers
        .get(hyper::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            AcmeError::new(
                step,
                FailureKind::Retryable,
                format!(
                    "the CA answered the new-account request ({}) without the account URL \
                     (Location)",
                    parts.status
                ),
            )
        })?
        .to_string();
    let object: AccountObject = serde_json::from_slice(&body).unwrap_or_default();
    let credentials = serde_json::json!({
        "id": url,
        "key_pkcs8": B64.encode(der),
        "directory": config.acme_directory,
    });
    let creds: AccountCredentials =
        serde_json::from_value(credentials.clone()).expect("credentials of our own making");
    let account = Account::builder_with_http(http)
        .from_credentials(creds)
        .await
        .map_err(|e| AcmeError::from_acme(step, e))?;
    debug_assert_eq!(account.key_thumbprint(), key.jwk().thumbprint());
    Ok(Registered {
        account,
        credentials: serde_json::to_vec(&credentials).expect("JSON serializes"),
        contact: object.contact,
        created: parts.status == hyper::StatusCode::CREATED,
    })
}

/// A refusal of the new-account request, classified as any other (`AcmeError::from_acme`: a
/// deactivated key's account is "gone"); the CA's own `externalAccountRequired` without an EAB
/// configured names the settings, and an EAB the CA refuses (`unauthorized`: an unknown key id
/// or a wrong HMAC key) is permanent: sending it again cannot help.
fn refused(p: instant_acme::Problem, eab_set: bool) -> AcmeError {
    let kind = p
        .r#type
        .as_deref()
        .and_then(|t| t.rsplit(':').next())
        .unwrap_or("")
        .to_string();
    let step = Step::Account;
    if kind == "externalAccountRequired" && !eab_set {
        return AcmeError::new(step, FailureKind::Permanent, EAB_MISSING);
    }
    let mut e = AcmeError::from_acme(step, instant_acme::Error::Api(p));
    if eab_set && kind == "unauthorized" && !e.account_gone {
        e.kind = FailureKind::Permanent;
        e.message = format!(
            "{} (the CA refused the External Account Binding: check EAB_KID and EAB_HMAC_KEY)",
            e.message
        );
    }
    e
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Directory {
    new_nonce: String,
    new_account: String,
    #[serde(default)]
    meta: Meta,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Meta {
    #[serde(default)]
    external_account_required: bool,
}

/// The fields of the account object (RFC 8555 §7.1.2) we log.
#[derive(Default, Deserialize)]
struct AccountObject {
    #[serde(default)]
    contact: Vec<String>,
}

fn request(method: &str, url: &str, body: Option<Vec<u8>>) -> hyper::Request<BodyWrapper<Bytes>> {
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(url)
        .header(hyper::header::USER_AGENT, USER_AGENT);
    if body.is_some() {
        req = req.header(hyper::header::CONTENT_TYPE, "application/jose+json");
    }
    req.body(body.map(BodyWrapper::from).unwrap_or_default())
        .expect("a request of valid parts")
}

async fn into_parts(
    mut rsp: instant_acme::BytesResponse,
    step: Step,
) -> Result<(hyper::http::response::Parts, Bytes), AcmeError> {
    let body = rsp
        .body
        .into_bytes()
        .await
        .map_err(|e| AcmeError::from_acme(step, instant_acme::Error::Other(e)))?;
    Ok((rsp.parts, body))
}

/// Sends `req` and returns the answer, or the CA's refusal classified.
async fn send(
    http: &dyn HttpClient,
    req: hyper::Request<BodyWrapper<Bytes>>,
    what: &str,
) -> Result<(hyper::http::response::Parts, Bytes), AcmeError> {
    let step = Step::Account;
    let rsp = http
        .request(req)
        .await
        .map_err(|e| AcmeError::from_acme(step, e))?;
    let (parts, body) = into_parts(rsp, step).await?;
    if !parts.status.is_success() {
        let mut e = AcmeError::from_acme(step, instant_acme::Error::Api(problem_of(&parts, &body)));
        e.message = format!("{what}: {}", e.message);
        return Err(e);
    }
    Ok((parts, body))
}

/// The problem document of an error answer (the HTTP client made one of any other body).
fn problem_of(parts: &hyper::http::response::Parts, body: &[u8]) -> instant_acme::Problem {
    serde_json::from_slice(body).unwrap_or_else(|_| {
        serde_json::from_value(serde_json::json!({
            "type": "about:blank",
            "detail": format!("HTTP {}", parts.status),
            "status": parts.status.as_u16(),
        }))
        .expect("a problem document")
    })
}

fn replay_nonce(parts: &hyper::http::response::Parts) -> Option<String> {
    parts
        .headers
        .get("replay-nonce")
        .and_then(|v| v.to_str().ok())
        .map(String::from)
}

/// A fresh nonce from the directory's `newNonce` (HEAD, RFC 8555 §7.2).
async fn new_nonce(http: &dyn HttpClient, url: &str) -> Result<String, AcmeError> {
    let (parts, _) = send(http, request("HEAD", url, None), "newNonce").await?;
    replay_nonce(&parts).ok_or_else(|| {
        AcmeError::new(
            Step::Account,
            FailureKind::Retryable,
            "the CA's newNonce answer has no Replay-Nonce",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(kind: &str, detail: &str) -> instant_acme::Problem {
        serde_json::from_value(serde_json::json!({
            "type": format!("urn:ietf:params:acme:error:{kind}"),
            "detail": detail,
            "status": 403,
        }))
        .unwrap()
    }

    #[test]
    fn refusals_of_the_binding_say_what_to_set() {
        let required = problem(
            "externalAccountRequired",
            "ACME server policy requires newAccount requests must include a value for the \
             'externalAccountBinding' field",
        );
        let e = refused(required.clone(), false);
        assert_eq!(
            (e.kind, e.message.as_str()),
            (FailureKind::Permanent, EAB_MISSING)
        );
        assert!(EAB_MISSING.contains("EAB_KID") && EAB_MISSING.contains("EAB_HMAC_KEY"));
        // pebble's answer to a wrong HMAC key.
        let wrong = problem(
            "unauthorized",
            "external account binding JWS verification error: go-jose/go-jose: error in \
             cryptographic primitive",
        );
        let e = refused(wrong.clone(), true);
        assert_eq!(e.kind, FailureKind::Permanent);
        assert!(e.message.contains("JWS verification error") && e.message.contains("EAB_KID"));
        // A deactivated key's account is still "gone", to register with a new key.
        let gone = problem(
            "unauthorized",
            "An account with the provided public key exists but is deactivated",
        );
        assert!(refused(gone.clone(), true).account_gone);
        assert!(refused(gone, false).account_gone);
        assert_eq!(refused(wrong, false).kind, FailureKind::Retryable);
    }
}
