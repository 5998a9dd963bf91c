//! Encryption of the secrets the PostgreSQL store holds (certificate keys, account keys and
//! credentials): AES-256-GCM from aws-lc-rs with the operator's key (`STORE_KEY_FILE`), a fresh
//! random nonce per value, and the row it belongs to as associated data, so a value copied into
//! another row does not open. A wrong key is found at start by a check value, never by a
//! certificate that no longer decrypts.

use std::path::Path;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;

/// What every sealed value starts with: the format, so a later one can change it.
const FORMAT: &[u8] = b"hae1";
/// The plaintext of the check value stored at the first start.
pub const CHECK_PLAINTEXT: &[u8] = b"haproxy-acme store key check";

/// The operator's key. Debug prints nothing of it.
pub struct SealKey {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(set)")
    }
}

impl SealKey {
    /// The key in `path`: 32 bytes as 64 hex digits or as base64 (whitespace trimmed), or the
    /// 32 raw bytes. `openssl rand -hex 32 > FILE` makes one.
    pub fn from_file(path: &Path) -> Result<SealKey, String> {
        if let Ok(meta) = std::fs::metadata(path) {
            use std::os::unix::fs::PermissionsExt;
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    file = %path.display(),
                    mode = format!("{:o}", meta.permissions().mode() & 0o777),
                    "STORE_KEY_FILE can be read by other users: chmod 600 it"
                );
            }
        }
        let bytes = std::fs::read(path)
            .map_err(|e| format!("cannot read STORE_KEY_FILE {}: {e}", path.display()))?;
        SealKey::from_bytes(&bytes).map_err(|why| {
            format!(
                "STORE_KEY_FILE {} {why}; make one with `openssl rand -hex 32 > FILE` (keep it: \
                 without it the keys in the store cannot be read)",
                path.display()
            )
        })
    }

    fn from_bytes(bytes: &[u8]) -> Result<SealKey, String> {
        let key = decode_key(bytes)?;
        let key = UnboundKey::new(&AES_256_GCM, &key)
            .map_err(|_| "holds a key AES-256-GCM refuses".to_string())?;
        Ok(SealKey {
            key: LessSafeKey::new(key),
            rng: SystemRandom::new(),
        })
    }

    /// `plaintext` encrypted for the row named `aad` (table and key).
    pub fn seal(&self, aad: &str, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .expect("the system's random generator works");
        let mut data = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad.as_bytes()),
                &mut data,
            )
            .expect("AES-GCM seals any length a store holds");
        let mut out = Vec::with_capacity(FORMAT.len() + NONCE_LEN + data.len());
        out.extend_from_slice(FORMAT);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&data);
        out
    }

    /// The plaintext of a value sealed for row `aad`; `None` when the key or the row is not the
    /// one it was sealed with, or the value is damaged.
    pub fn open(&self, aad: &str, sealed: &[u8]) -> Option<Vec<u8>> {
        let rest = sealed.strip_prefix(FORMAT)?;
        if rest.len() < NONCE_LEN {
            return None;
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut data = ciphertext.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut data)
            .ok()?;
        Some(plain.to_vec())
    }
}

fn decode_key(bytes: &[u8]) -> Result<[u8; 32], String> {
    if bytes.len() == 32 {
        return Ok(bytes.try_into().expect("32 bytes"));
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|_| "is neither 32 raw bytes nor text".to_string())?
        .trim();
    let decoded = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        (0..32)
            .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|e| e.to_string())?
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|_| "holds neither 64 hex digits nor base64".to_string())?
    };
    <[u8; 32]>::try_from(decoded.as_slice())
        .map_err(|_| format!("holds {} bytes, a key is 32", decoded.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> SealKey {
        SealKey::from_bytes(&[byte; 32]).unwrap()
    }

    #[test]
    fn a_sealed_value_opens_only_with_its_key_and_its_row() {
        let k = key(7);
        let sealed = k.seal("keys/current/a.com", b"-----BEGIN PRIVATE KEY-----");
        assert!(!sealed.windows(11).any(|w| w == b"BEGIN PRIVA"));
        assert_eq!(
            k.open("keys/current/a.com", &sealed).unwrap(),
            b"-----BEGIN PRIVATE KEY-----"
        );
        assert!(k.open("keys/current/b.com", &sealed).is_none());
        assert!(key(8).open("keys/current/a.com", &sealed).is_none());
        let mut damaged = sealed.clone();
        *damaged.last_mut().unwrap() ^= 1;
        assert!(k.open("keys/current/a.com", &damaged).is_none());
        // A fresh nonce each time: the same value never seals to the same bytes.
        assert_ne!(
            sealed,
            k.seal("keys/current/a.com", b"-----BEGIN PRIVATE KEY-----")
        );
    }

    #[test]
    fn key_files_in_hex_base64_or_raw_and_clear_refusals() {
        let hex = "00".repeat(31) + "ff";
        let a = SealKey::from_bytes(format!("{hex}\n").as_bytes()).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(
            [0u8; 31]
                .iter()
                .chain(&[0xff])
                .copied()
                .collect::<Vec<u8>>(),
        );
        let b = SealKey::from_bytes(b64.as_bytes()).unwrap();
        let mut raw = [0u8; 32];
        raw[31] = 0xff;
        let c = SealKey::from_bytes(&raw).unwrap();
        let sealed = a.seal("x", b"v");
        assert_eq!(b.open("x", &sealed).unwrap(), b"v");
        assert_eq!(c.open("x", &sealed).unwrap(), b"v");
        assert!(SealKey::from_bytes(b"short")
            .unwrap_err()
            .contains("neither 64 hex digits nor base64"));
        assert!(SealKey::from_bytes(b"AAAA")
            .unwrap_err()
            .contains("holds 3 bytes, a key is 32"));
        assert_eq!(format!("{a:?}"), "SealKey(set)");
    }
}
