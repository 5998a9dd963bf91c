//! Key and certificate handling: key generation, CSRs, the self-signed default certificate,
//! reading what we need from a PEM chain, and every PEM text we write (the deploy hook's lineage
//! files, HAProxy's bundle). The only user of rcgen, x509-parser and pem (sha2 also sums
//! the store's snapshots).
//!
//! PEM is read and written with the `pem` crate, the one rcgen's own `pem` feature is built on
//! (already in the build). It was picked over x509-parser's `Pem` and rustls-pki-types'
//! `PemObject` because it also *encodes*: what this module hands out is re-encoded from the
//! DER, so whatever line endings (CRLF), blank lines or text between blocks a chain came with,
//! one canonical form comes out (64-column base64, LF, a newline after each block, no blank
//! line), the same as rcgen's `pem()`.

use haproxy_acme_state::{CertMeta, KeyType, UnixTime};
use pem::Pem;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, RsaKeySize};
use sha2::{Digest, Sha256};

/// Errors from key or certificate handling. Messages never include key material.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("could not generate a {0} key: {1}")]
    KeyGeneration(&'static str, String),
    #[error("the stored private key cannot be read (store damaged?): {0}")]
    BadKey(String),
    #[error("could not build the certificate signing request: {0}")]
    Csr(String),
    #[error("the CA returned a certificate chain that cannot be parsed: {0}")]
    BadChain(String),
    #[error("not PEM: {0}")]
    BadPem(String),
}

/// Generates a private key of `key_type`, returned as PKCS#8 PEM.
pub fn generate_key(key_type: KeyType) -> Result<String, PkiError> {
    let err = |e: rcgen::Error| PkiError::KeyGeneration(key_type.as_str(), e.to_string());
    let kp = match key_type {
        KeyType::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        KeyType::EcdsaP384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
        KeyType::Rsa2048 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_2048),
        KeyType::Rsa4096 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_4096),
    }
    .map_err(err)?;
    Ok(kp.serialize_pem())
}

/// A DER-encoded CSR for `names`, signed with the stored key `key_pem`.
pub fn csr_der(names: &[String], key_pem: &str) -> Result<Vec<u8>, PkiError> {
    let kp = KeyPair::from_pem(key_pem).map_err(|e| PkiError::BadKey(e.to_string()))?;
    let mut params =
        CertificateParams::new(names.to_vec()).map_err(|e| PkiError::Csr(e.to_string()))?;
    params.distinguished_name = DistinguishedName::new();
    let csr = params
        .serialize_request(&kp)
        .map_err(|e| PkiError::Csr(e.to_string()))?;
    Ok(csr.der().to_vec())
}

/// A self-signed certificate plus key (one PEM) for `CN=default.invalid`, served by HAProxy for
/// unknown names and before the first issuance.
pub fn self_signed_default() -> Result<String, PkiError> {
    let kp = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| PkiError::KeyGeneration("ecdsa-p256", e.to_string()))?;
    let mut params = CertificateParams::new(vec!["default.invalid".to_string()])
        .map_err(|e| PkiError::Csr(e.to_string()))?;
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "default.invalid");
    let cert = params
        .self_signed(&kp)
        .map_err(|e| PkiError::Csr(e.to_string()))?;
    Ok(format!("{}{}", cert.pem(), kp.serialize_pem()))
}

/// The TLS-ALPN-01 certificate for `name` (RFC 8737 §3): self-signed, that one name, and the
/// critical acmeIdentifier extension holding SHA-256(`key_authorization`). Returned as (the
/// certificate, its PKCS#8 key), both DER: made in memory for a handshake, never written.
pub fn tls_alpn_certificate(
    name: &str,
    key_authorization: &str,
) -> Result<(Vec<u8>, Vec<u8>), PkiError> {
    let kp = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| PkiError::KeyGeneration("ecdsa-p256", e.to_string()))?;
    let mut params =
        CertificateParams::new(vec![name.to_string()]).map_err(|e| PkiError::Csr(e.to_string()))?;
    let digest = Sha256::digest(key_authorization.as_bytes());
    params
        .custom_extensions
        .push(rcgen::CustomExtension::new_acme_identifier(&digest));
    let cert = params
        .self_signed(&kp)
        .map_err(|e| PkiError::Csr(e.to_string()))?;
    Ok((cert.der().to_vec(), kp.serialize_der()))
}

const CERTIFICATE: &str = "CERTIFICATE";

/// The PEM blocks of `text`, in order (text outside blocks is ignored); at least one.
fn blocks(text: &str) -> Result<Vec<Pem>, String> {
    let blocks = pem::parse_many(text).map_err(|e| e.to_string())?;
    if blocks.is_empty() {
        return Err("no PEM block found".into());
    }
    Ok(blocks)
}

/// The certificates of a PEM chain, leaf first; the first block must be a certificate, and with
/// `only_certificates` every block.
fn chain_blocks(chain_pem: &str, only_certificates: bool) -> Result<Vec<Pem>, PkiError> {
    let blocks = blocks(chain_pem).map_err(PkiError::BadChain)?;
    let mut tags = blocks.iter().map(Pem::tag);
    if tags.next() != Some(CERTIFICATE) {
        return Err(PkiError::BadChain(format!(
            "first PEM block is a {}",
            blocks[0].tag()
        )));
    }
    if only_certificates {
        if let Some(other) = tags.find(|t| *t != CERTIFICATE) {
            return Err(PkiError::BadChain(format!(
                "a {other} block in a certificate chain"
            )));
        }
    }
    Ok(blocks)
}

/// `blocks` in the canonical form (see the module's comment).
fn encode(blocks: &[Pem]) -> String {
    let lf = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    blocks.iter().map(|b| pem::encode_config(b, lf)).collect()
}

/// The DER of every certificate in `pem_text` (a CA bundle), in order; other blocks are
/// skipped.
pub fn certificates_der(pem_text: &str) -> Result<Vec<Vec<u8>>, PkiError> {
    let blocks = pem::parse_many(pem_text).map_err(|e| PkiError::BadPem(e.to_string()))?;
    Ok(blocks
        .into_iter()
        .filter(|b| b.tag() == CERTIFICATE)
        .map(Pem::into_contents)
        .collect())
}

/// How many certificates a CA bundle (`ACME_CA_BUNDLE`) holds, each parsed as X.509; the error
/// names the first that is not one.
pub fn ca_bundle_certificates(pem_text: &str) -> Result<usize, PkiError> {
    let ders = certificates_der(pem_text)?;
    for (i, der) in ders.iter().enumerate() {
        x509_parser::parse_x509_certificate(der)
            .map_err(|e| PkiError::BadPem(format!("certificate {} is not X.509: {e}", i + 1)))?;
    }
    Ok(ders.len())
}

/// The DER of the leaf (first certificate) of a PEM chain.
pub fn leaf_der(chain_pem: &str) -> Result<Vec<u8>, PkiError> {
    let mut blocks = chain_blocks(chain_pem, false)?;
    Ok(blocks.swap_remove(0).into_contents())
}

/// Splits a PEM chain into its leaf and its issuers (certbot's `cert.pem` and `chain.pem`),
/// each re-encoded (`""` for a chain of one certificate). Every block must be a certificate.
pub fn split_chain(chain_pem: &str) -> Result<(String, String), PkiError> {
    let blocks = chain_blocks(chain_pem, true)?;
    Ok((encode(&blocks[..1]), encode(&blocks[1..])))
}

/// The file HAProxy loads, and the payload of `set ssl cert`: leaf, issuers, key. No blank line
/// (a blank line ends a runtime-API payload), one newline at the end.
pub fn haproxy_bundle(chain_pem: &str, key_pem: &str) -> Result<String, PkiError> {
    let chain = chain_blocks(chain_pem, true)?;
    let key = blocks(key_pem).map_err(PkiError::BadKey)?;
    if !key.iter().any(|b| b.tag().ends_with("PRIVATE KEY")) {
        return Err(PkiError::BadKey("no PRIVATE KEY block".into()));
    }
    // Headers (`Proc-Type: 4,ENCRYPTED`) would be followed by a blank line, and HAProxy could
    // not use an encrypted key anyway.
    if key
        .iter()
        .any(|b| b.tag() == "ENCRYPTED PRIVATE KEY" || b.headers().iter().next().is_some())
    {
        return Err(PkiError::BadKey("the key is encrypted".into()));
    }
    let mut all = chain;
    all.extend(key);
    Ok(encode(&all))
}

/// Splits a certificate file as [`haproxy_bundle`] writes it (`<id>.pem`: leaf, issuers, key)
/// into its chain and its key, each re-encoded: what `rebuild` adopts.
pub fn split_bundle(bundle: &str) -> Result<(String, String), PkiError> {
    let all = blocks(bundle).map_err(PkiError::BadPem)?;
    let (certs, rest): (Vec<Pem>, Vec<Pem>) = all.into_iter().partition(|b| b.tag() == CERTIFICATE);
    let keys: Vec<Pem> = rest
        .into_iter()
        .filter(|b| b.tag().ends_with("PRIVATE KEY"))
        .collect();
    if certs.is_empty() {
        return Err(PkiError::BadPem("no CERTIFICATE block".into()));
    }
    if keys.len() != 1 {
        return Err(PkiError::BadPem(format!(
            "{} PRIVATE KEY blocks, expected one",
            keys.len()
        )));
    }
    Ok((encode(&certs), encode(&keys)))
}

/// Reads serial, validity and fingerprint of the leaf (first certificate) of a PEM chain.
pub fn chain_meta(chain_pem: &str, now: UnixTime) -> Result<CertMeta, PkiError> {
    let der = leaf_der(chain_pem)?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(&der).map_err(|e| PkiError::BadChain(e.to_string()))?;
    let validity = cert.validity();
    Ok(CertMeta {
        serial: serial_hex(cert.raw_serial()),
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
        fingerprint: hex(&Sha256::digest(&der)),
        issued_at: now,
    })
}

/// What identifies the leaf of a chain obtained elsewhere (`import certbot`).
#[derive(Debug)]
pub struct Leaf {
    /// DNS names: the subject's common name first when it is one of them, then the others in
    /// the certificate's order.
    pub names: Vec<String>,
    /// `None` for a key type we do not issue (Ed25519, P-521, odd RSA sizes).
    pub key_type: Option<KeyType>,
    /// SubjectPublicKeyInfo DER, to check the private key against.
    spki: Vec<u8>,
}

/// Reads the names, key type and public key of the leaf of `chain_pem`.
pub fn leaf(chain_pem: &str) -> Result<Leaf, PkiError> {
    use x509_parser::extensions::GeneralName;
    use x509_parser::public_key::PublicKey;
    let der = leaf_der(chain_pem)?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(&der).map_err(|e| PkiError::BadChain(e.to_string()))?;
    let mut names: Vec<String> = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok())
        .map(str::to_ascii_lowercase);
    if let Some(pos) = cn.and_then(|cn| names.iter().position(|n| *n == cn)) {
        let cn = names.remove(pos);
        names.insert(0, cn);
    }
    let spki = cert.public_key();
    let key_type = match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) => match rsa.key_size() {
            2048 => Some(KeyType::Rsa2048),
            4096 => Some(KeyType::Rsa4096),
            _ => None,
        },
        Ok(PublicKey::EC(_)) => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string());
            match curve.as_deref() {
                Some("1.2.840.10045.3.1.7") => Some(KeyType::EcdsaP256),
                Some("1.3.132.0.34") => Some(KeyType::EcdsaP384),
                _ => None,
            }
        }
        _ => None,
    };
    Ok(Leaf {
        names,
        key_type,
        spki: spki.raw.to_vec(),
    })
}

impl Leaf {
    /// Whether `key_pem` is the private key of this certificate.
    pub fn matches_key(&self, key_pem: &str) -> Result<bool, PkiError> {
        use rcgen::PublicKeyData;
        let kp = KeyPair::from_pem(key_pem).map_err(|e| PkiError::BadKey(e.to_string()))?;
        Ok(kp.subject_public_key_info() == self.spki)
    }
}

/// Serial as HAProxy's `show ssl cert` prints it: the integer's bytes in upper-case hex, without
/// DER's leading zero sign byte (so a serial may start with one '0' digit, e.g. "0DF4...").
pub fn serial_hex(raw: &[u8]) -> String {
    let first = raw
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(raw.len().saturating_sub(1));
    raw[first..].iter().map(|b| format!("{b:02X}")).collect()
}

/// SHA-256 of `data` in lower-case hex (the shortened certificate file names of
/// `config::cert_file_name`).
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_every_type_sign_a_csr() {
        for kt in [KeyType::EcdsaP256, KeyType::EcdsaP384, KeyType::Rsa2048] {
            let key = generate_key(kt).unwrap();
            assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "{kt:?}");
            let der = csr_der(&["a.test".into(), "www.a.test".into()], &key).unwrap();
            assert!(der.len() > 100);
        }
    }

    #[test]
    fn default_certificate_parses_and_has_a_key() {
        let pem = self_signed_default().unwrap();
        assert!(pem.contains("BEGIN CERTIFICATE") && pem.contains("BEGIN PRIVATE KEY"));
        let meta = chain_meta(&pem, 5).unwrap();
        assert_eq!(meta.fingerprint.len(), 64);
        assert!(meta.not_after > meta.not_before);
        assert_eq!(meta.issued_at, 5);
    }

    #[test]
    fn a_leaf_names_its_common_name_first_and_matches_only_its_key() {
        let key = generate_key(KeyType::EcdsaP384).unwrap();
        let kp = KeyPair::from_pem(&key).unwrap();
        let mut params =
            CertificateParams::new(vec!["www.a.test".into(), "a.test".into()]).unwrap();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "a.test");
        params.distinguished_name = dn;
        let pem = params.self_signed(&kp).unwrap().pem();
        let leaf = leaf(&pem).unwrap();
        assert_eq!(leaf.names, vec!["a.test", "www.a.test"]);
        assert_eq!(leaf.key_type, Some(KeyType::EcdsaP384));
        assert!(leaf.matches_key(&key).unwrap());
        let other = generate_key(KeyType::EcdsaP384).unwrap();
        assert!(!leaf.matches_key(&other).unwrap());
        let rsa = generate_key(KeyType::Rsa2048).unwrap();
        let kp = KeyPair::from_pem(&rsa).unwrap();
        let pem = CertificateParams::new(vec!["r.test".into()])
            .unwrap()
            .self_signed(&kp)
            .unwrap()
            .pem();
        let rsa_leaf = super::leaf(&pem).unwrap();
        assert_eq!(rsa_leaf.key_type, Some(KeyType::Rsa2048));
        assert!(rsa_leaf.matches_key(&rsa).unwrap());
    }

    #[test]
    fn serial_spelling_matches_haproxy() {
        assert_eq!(serial_hex(&[0x00, 0x0a, 0xbc]), "0ABC");
        assert_eq!(serial_hex(&[0x00, 0x8a]), "8A");
        assert_eq!(serial_hex(&[0x00]), "00");
        assert_eq!(serial_hex(&[0x12, 0x00]), "1200");
    }

    /// A leaf for a.test signed by a CA: (chain, leaf, CA, the leaf's key), each as rcgen
    /// writes PEM (the canonical form).
    fn signed_chain() -> (String, String, String, String) {
        use rcgen::{BasicConstraints, CertifiedIssuer, IsCa};
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["a.test".to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let (leaf, ca) = (leaf.pem(), ca.pem());
        (format!("{leaf}{ca}"), leaf, ca, key.serialize_pem())
    }

    #[test]
    fn the_leaf_is_split_from_its_issuers() {
        let (chain, leaf, ca, _) = signed_chain();
        assert_eq!(split_chain(&chain).unwrap(), (leaf.clone(), ca));
        assert_eq!(split_chain(&leaf).unwrap(), (leaf.clone(), String::new()));
        assert_eq!(
            leaf_der(&chain).unwrap(),
            pem::parse(&leaf).unwrap().into_contents()
        );
        assert!(split_chain("").is_err());
        assert!(split_chain("no pem here").is_err());
        let (_, _, _, key) = signed_chain();
        let e = split_chain(&format!("{leaf}{key}")).unwrap_err();
        assert!(e.to_string().contains("a PRIVATE KEY block"), "{e}");
        assert!(leaf_der(&key).is_err());
    }

    #[test]
    fn the_haproxy_bundle_is_leaf_issuers_key_without_blank_lines() {
        let (chain, leaf, ca, key) = signed_chain();
        let b = haproxy_bundle(&chain, &key).unwrap();
        assert_eq!(b, format!("{leaf}{ca}{key}"));
        assert!(!b.contains("\n\n") && b.ends_with("-----\n"), "{b}");
        assert!(haproxy_bundle(&chain, "").is_err());
        assert!(haproxy_bundle(&chain, &ca).is_err(), "no key");
        let encrypted = key.replace(
            "-----\n",
            "-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\n",
        );
        let e = haproxy_bundle(&chain, &encrypted).unwrap_err();
        assert!(e.to_string().contains("encrypted"), "{e}");
        // `rebuild` reads the bundle back into what it was made of.
        assert_eq!(split_bundle(&b).unwrap(), (chain.clone(), key.clone()));
        let e = split_bundle(&chain).unwrap_err().to_string();
        assert!(e.contains("0 PRIVATE KEY blocks"), "{e}");
        assert!(split_bundle(&key).is_err(), "no certificate");
        assert!(split_bundle(&format!("{b}{key}")).is_err(), "two keys");
    }

    #[test]
    fn crlf_blank_lines_and_text_between_blocks_read_the_same() {
        let (chain, leaf, ca, key) = signed_chain();
        let variants = [
            chain.replace('\n', "\r\n"),
            format!("\n{leaf}\n\n{ca}\n\n"),
            format!("subject=CN=a.test\n{leaf}\r\n\r\nsubject=CN=ca\n{ca}"),
        ];
        let crlf_key = key.replace('\n', "\r\n");
        for v in &variants {
            assert_eq!(
                split_chain(v).unwrap(),
                split_chain(&chain).unwrap(),
                "{v:?}"
            );
            assert_eq!(leaf_der(v).unwrap(), leaf_der(&chain).unwrap());
            assert_eq!(
                chain_meta(v, 0).unwrap().fingerprint,
                chain_meta(&chain, 0).unwrap().fingerprint
            );
            assert_eq!(
                haproxy_bundle(v, &crlf_key).unwrap(),
                haproxy_bundle(&chain, &key).unwrap()
            );
        }
        assert_eq!(certificates_der(&variants[2]).unwrap().len(), 2);
        assert_eq!(
            certificates_der(&format!("{key}{ca}")).unwrap(),
            vec![leaf_der(&ca).unwrap()]
        );
    }

    #[test]
    fn a_bad_chain_is_an_error_not_a_panic() {
        assert!(chain_meta("", 0).is_err());
        assert!(chain_meta(
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            0
        )
        .is_err());
    }
}
