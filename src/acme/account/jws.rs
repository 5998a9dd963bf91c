//! The JWS of the new-account request (RFC 8555 §7.3, RFC 7515 flattened JSON): ES256 with the
//! account key over {alg, jwk, nonce, url}, and the External Account Binding (§7.3.4): the
//! account's JWK MACed with HS256 under {alg, kid, url}. Pure: tested without I/O.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use aws_lc_rs::{digest, hmac};
use base64::prelude::{Engine, BASE64_URL_SAFE_NO_PAD as B64};
use serde::{Deserialize, Serialize};

use crate::config::eab::Eab;

/// A P-256 account key.
pub(crate) struct AccountKey {
    pair: EcdsaKeyPair,
}

impl AccountKey {
    pub(crate) fn from_pkcs8(der: &[u8]) -> Result<AccountKey, String> {
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
            .map(|pair| AccountKey { pair })
            .map_err(|e| format!("not a P-256 PKCS#8 key: {e}"))
    }

    /// The public key as a JWK (RFC 7518 §6.2.1).
    pub(crate) fn jwk(&self) -> Jwk {
        // The uncompressed point: 0x04 || x || y.
        let (x, y) = self.pair.public_key().as_ref()[1..].split_at(32);
        Jwk {
            crv: "P-256",
            kty: "EC",
            x: B64.encode(x),
            y: B64.encode(y),
        }
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        self.pair
            .sign(&SystemRandom::new(), message)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| "signing with the account key failed".to_string())
    }
}

/// An EC public JWK with only its required members, in lexicographic order: its JSON is the
/// RFC 7638 canonical form the thumbprint is computed over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Jwk {
    crv: &'static str,
    kty: &'static str,
    x: String,
    y: String,
}

impl Jwk {
    /// The RFC 7638 thumbprint (SHA-256, base64url): what key authorizations end with.
    pub(crate) fn thumbprint(&self) -> String {
        let json = serde_json::to_vec(self).expect("a JWK serializes");
        B64.encode(digest::digest(&digest::SHA256, &json))
    }
}

/// A JWS in the flattened JSON serialization (RFC 7515 §7.2.2), as ACME sends them.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Jws {
    protected: String,
    payload: String,
    signature: String,
}

#[derive(Serialize)]
struct Protected<'a> {
    alg: &'static str,
    jwk: &'a Jwk,
    nonce: &'a str,
    url: &'a str,
}

#[derive(Serialize)]
struct EabProtected<'a> {
    alg: &'static str,
    kid: &'a str,
    url: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NewAccount<'a> {
    terms_of_service_agreed: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    contact: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    external_account_binding: Option<Jws>,
}

fn b64_json(v: &impl Serialize) -> String {
    B64.encode(serde_json::to_vec(v).expect("JSON serializes"))
}

/// The new-account request (RFC 8555 §7.3): ES256 over {alg, jwk, nonce, url}; the payload
/// agrees to the terms, lists `contact`, and carries the EAB when one is configured.
pub(crate) fn new_account_jws(
    key: &AccountKey,
    nonce: &str,
    url: &str,
    contact: Option<&str>,
    eab: Option<&Eab>,
) -> Result<Jws, String> {
    let jwk = key.jwk();
    let payload = NewAccount {
        terms_of_service_agreed: true,
        contact: contact.into_iter().collect(),
        external_account_binding: eab.map(|e| eab_jws(&e.kid, e.hmac_key.bytes(), &jwk, url)),
    };
    let protected = b64_json(&Protected {
        alg: "ES256",
        jwk: &jwk,
        nonce,
        url,
    });
    let payload = b64_json(&payload);
    let signature = key.sign(format!("{protected}.{payload}").as_bytes())?;
    Ok(Jws {
        protected,
        payload,
        signature: B64.encode(signature),
    })
}

/// The External Account Binding (RFC 8555 §7.3.4): the account's public JWK, MACed (HS256)
/// with the CA's key under {alg, kid, url} (no nonce).
fn eab_jws(kid: &str, hmac_key: &[u8], jwk: &Jwk, url: &str) -> Jws {
    let protected = b64_json(&EabProtected {
        alg: "HS256",
        kid,
        url,
    });
    let payload = b64_json(jwk);
    let key = hmac::Key::new(hmac::HMAC_SHA256, hmac_key);
    let tag = hmac::sign(&key, format!("{protected}.{payload}").as_bytes());
    Jws {
        protected,
        payload,
        signature: B64.encode(tag.as_ref()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acme::http::http_client;
    use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};
    use instant_acme::{Account, AccountCredentials};
    use serde_json::Value;

    fn key() -> (AccountKey, Vec<u8>) {
        let (_, pkcs8) = instant_acme::Key::generate_pkcs8().unwrap();
        let der = pkcs8.secret_pkcs8_der().to_vec();
        (AccountKey::from_pkcs8(&der).unwrap(), der)
    }

    fn decode(s: &str) -> Vec<u8> {
        assert!(!s.contains('='), "base64url without padding: {s}");
        assert!(!s.contains('+') && !s.contains('/'), "base64url: {s}");
        B64.decode(s).unwrap()
    }

    fn json(s: &str) -> Value {
        serde_json::from_slice(&decode(s)).unwrap()
    }

    fn eab(key: &[u8]) -> Eab {
        crate::config::eab::from_settings(
            Some("kid-1"),
            Some(&B64.encode(key).parse().unwrap()),
            None,
        )
        .unwrap()
        .unwrap()
    }

    #[test]
    fn the_new_account_request_is_signed_by_the_stored_key() {
        let (key, _) = key();
        let url = "https://ca.test/new-acct";
        let hmac_key = b"0123456789abcdef0123456789abcdef";
        let jws = new_account_jws(
            &key,
            "nonce-1",
            url,
            Some("mailto:a@b.test"),
            Some(&eab(hmac_key)),
        )
        .unwrap();
        // The ES256 signature verifies with the account's public key over `protected.payload`.
        let public =
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, key.pair.public_key().as_ref());
        let signed = format!("{}.{}", jws.protected, jws.payload);
        let sig = decode(&jws.signature);
        assert_eq!(sig.len(), 64, "r || s, not DER");
        public
            .verify(signed.as_bytes(), &sig)
            .expect("ES256 verifies");
        assert!(public.verify(b"something else", &sig).is_err());
        // The protected header.
        let protected = json(&jws.protected);
        let jwk = serde_json::to_value(key.jwk()).unwrap();
        assert_eq!(
            protected,
            serde_json::json!({"alg": "ES256", "jwk": jwk, "nonce": "nonce-1", "url": url})
        );
        // The payload: terms, contact, and the binding.
        let payload = json(&jws.payload);
        assert_eq!(payload["termsOfServiceAgreed"], true);
        assert_eq!(payload["contact"], serde_json::json!(["mailto:a@b.test"]));
        let binding: Jws =
            serde_json::from_value(payload["externalAccountBinding"].clone()).unwrap();
        assert_eq!(
            json(&binding.protected),
            serde_json::json!({"alg": "HS256", "kid": "kid-1", "url": url})
        );
        assert_eq!(
            json(&binding.payload),
            jwk,
            "the EAB binds the account's key"
        );
        let mac = hmac::Key::new(hmac::HMAC_SHA256, hmac_key);
        let maced = format!("{}.{}", binding.protected, binding.payload);
        hmac::verify(&mac, maced.as_bytes(), &decode(&binding.signature)).expect("HS256");
        let other = hmac::Key::new(hmac::HMAC_SHA256, b"another key");
        assert!(hmac::verify(&other, maced.as_bytes(), &decode(&binding.signature)).is_err());
    }

    #[test]
    fn without_email_or_eab_the_payload_has_neither() {
        let (key, _) = key();
        let jws = new_account_jws(&key, "n", "https://ca.test/new-acct", None, None).unwrap();
        assert_eq!(
            json(&jws.payload),
            serde_json::json!({"termsOfServiceAgreed": true})
        );
    }

    /// The key authorizations instant-acme computes for the restored account use the thumbprint
    /// of the key the CA registered from our JWK: the same.
    #[tokio::test]
    async fn the_thumbprint_is_instant_acmes() {
        let (key, der) = key();
        let jwk = key.jwk();
        assert_eq!(
            String::from_utf8(serde_json::to_vec(&jwk).unwrap()).unwrap(),
            format!(
                r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
                jwk.x, jwk.y
            ),
            "RFC 7638 canonical JSON"
        );
        // Restored from credentials that carry the directory's URLs: no network.
        let creds: AccountCredentials = serde_json::from_value(serde_json::json!({
            "id": "https://ca.test/acct/1",
            "key_pkcs8": B64.encode(&der),
            "directory": null,
            "urls": {
                "newNonce": "https://ca.test/nonce",
                "newAccount": "https://ca.test/new-acct",
                "newOrder": "https://ca.test/new-order"
            }
        }))
        .unwrap();
        let account = Account::builder_with_http(http_client(None).unwrap())
            .from_credentials(creds)
            .await
            .unwrap();
        assert_eq!(account.key_thumbprint(), jwk.thumbprint());
        assert_eq!(account.id(), "https://ca.test/acct/1");
    }
}
