//! External Account Binding settings (RFC 8555 §7.3.4): `EAB_KID` with `EAB_HMAC_KEY` or
//! `EAB_HMAC_KEY_FILE`, checked into an [`Eab`] whose HMAC key never prints (Debug, the JSON of
//! `check-config`, error messages: "(set)" or nothing).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::prelude::{Engine, BASE64_URL_SAFE_NO_PAD};
use serde::Serialize;

/// A secret as given on the command line or in the environment (`EAB_HMAC_KEY`): its Debug
/// form is "(set)", so `RawSettings` can be printed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl FromStr for SecretString {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(SecretString(s.to_string()))
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("(set)")
    }
}

/// The decoded HMAC key: Debug and Serialize print "(set)".
#[derive(Clone, PartialEq, Eq)]
pub struct HmacKey(Vec<u8>);

impl HmacKey {
    pub(super) fn new(bytes: Vec<u8>) -> Self {
        HmacKey(bytes)
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for HmacKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("(set)")
    }
}

impl Serialize for HmacKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("(set)")
    }
}

/// The external account binding sent with the new-account request, and only with it (a stored
/// account is used without it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Eab {
    /// `EAB_KID`: the key identifier the CA gave.
    pub kid: String,
    /// `EAB_HMAC_KEY` or the content of `EAB_HMAC_KEY_FILE`, decoded.
    pub hmac_key: HmacKey,
    /// `EAB_HMAC_KEY_FILE`, when the key came from a file.
    pub hmac_key_file: Option<PathBuf>,
}

/// `from_settings` of the raw settings.
pub fn from_raw(raw: &crate::cli::RawSettings) -> Result<Option<Eab>, Vec<String>> {
    from_settings(
        raw.eab_kid.as_deref(),
        raw.eab_hmac_key.as_ref(),
        raw.eab_hmac_key_file.as_deref(),
    )
}

/// Checks the three settings: both a key id and a key (given once: the variable or the file),
/// or none. Problems are one line each and never quote the key.
pub fn from_settings(
    kid: Option<&str>,
    key: Option<&SecretString>,
    key_file: Option<&Path>,
) -> Result<Option<Eab>, Vec<String>> {
    let kid = kid.map(str::trim).filter(|k| !k.is_empty());
    let key = key.map(|k| k.expose().trim()).filter(|k| !k.is_empty());
    let key_file = key_file.filter(|p| !p.as_os_str().is_empty());
    let (key, file) = match (key, key_file) {
        (Some(_), Some(_)) => {
            return Err(vec![
                "EAB_HMAC_KEY and EAB_HMAC_KEY_FILE are both set: keep one of them".into(),
            ])
        }
        (Some(k), None) => (
            decode(k).map_err(|why| vec![format!("EAB_HMAC_KEY: {why}")])?,
            None,
        ),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                vec![format!(
                    "EAB_HMAC_KEY_FILE {}: cannot be read: {e}",
                    path.display()
                )]
            })?;
            let text = text.trim();
            if text.is_empty() {
                return Err(vec![format!(
                    "EAB_HMAC_KEY_FILE {}: the file is empty (expected the HMAC key from your CA, \
                     base64url)",
                    path.display()
                )]);
            }
            let key = decode(text)
                .map_err(|why| vec![format!("EAB_HMAC_KEY_FILE {}: {why}", path.display())])?;
            (key, Some(path.to_path_buf()))
        }
        (None, None) => {
            return match kid {
                None => Ok(None),
                Some(_) => Err(vec![
                    "EAB_KID is set but no HMAC key: set EAB_HMAC_KEY or EAB_HMAC_KEY_FILE too"
                        .into(),
                ]),
            }
        }
    };
    let Some(kid) = kid else {
        let which = if file.is_some() {
            "EAB_HMAC_KEY_FILE"
        } else {
            "EAB_HMAC_KEY"
        };
        return Err(vec![format!(
            "{which} is set but EAB_KID is not: set EAB_KID to the key id your CA gave with the key"
        )]);
    };
    Ok(Some(Eab {
        kid: kid.to_string(),
        hmac_key: HmacKey(key),
        hmac_key_file: file,
    }))
}

/// Decodes an HMAC key as CAs hand it out (base64url without padding); padded and standard
/// base64 are accepted too. The error never quotes the key.
pub(super) fn decode(text: &str) -> Result<Vec<u8>, &'static str> {
    let url: String = text
        .trim_end_matches('=')
        .chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect();
    match BASE64_URL_SAFE_NO_PAD.decode(url) {
        Ok(key) if !key.is_empty() => Ok(key),
        _ => Err("not a base64url HMAC key (expected the key exactly as your CA gave it)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> SecretString {
        s.parse().unwrap()
    }

    /// pebble's test key (test/config/pebble-config-external-account-bindings.json).
    const KEY: &str = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";

    #[test]
    fn a_key_id_and_a_key_make_a_binding() {
        let eab = from_settings(Some(" kid-1 "), Some(&secret(KEY)), None)
            .unwrap()
            .unwrap();
        assert_eq!(eab.kid, "kid-1");
        assert_eq!(
            eab.hmac_key.bytes(),
            BASE64_URL_SAFE_NO_PAD.decode(KEY).unwrap()
        );
        assert_eq!(from_settings(None, None, None), Ok(None));
        assert_eq!(from_settings(Some(""), Some(&secret(" ")), None), Ok(None));
    }

    #[test]
    fn padded_and_standard_base64_are_accepted() {
        let raw = [0xfbu8, 0xff, 0xfe, 0x01];
        for text in ["-__-AQ", "-__-AQ==", "+//+AQ==", "+//+AQ"] {
            assert_eq!(decode(text).unwrap(), raw, "{text}");
        }
        assert!(decode("not base64!").is_err());
        assert!(decode("").is_err());
    }

    #[test]
    fn one_setting_without_the_other_is_named() {
        let e = from_settings(Some("kid-1"), None, None).unwrap_err();
        assert!(e[0].contains("EAB_HMAC_KEY or EAB_HMAC_KEY_FILE"), "{e:?}");
        let e = from_settings(None, Some(&secret(KEY)), None).unwrap_err();
        assert!(e[0].starts_with("EAB_HMAC_KEY is set but EAB_KID"), "{e:?}");
        let e = from_settings(Some("k"), Some(&secret(KEY)), Some(Path::new("/x"))).unwrap_err();
        assert!(e[0].contains("both set"), "{e:?}");
    }

    #[test]
    fn the_key_file_is_read_trimmed_and_named_when_unusable() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hmac");
        std::fs::write(&file, format!("  {KEY}\n")).unwrap();
        let eab = from_settings(Some("kid-1"), None, Some(&file))
            .unwrap()
            .unwrap();
        assert_eq!(
            eab.hmac_key.bytes(),
            BASE64_URL_SAFE_NO_PAD.decode(KEY).unwrap()
        );
        assert_eq!(eab.hmac_key_file.as_deref(), Some(file.as_path()));
        std::fs::write(&file, "\n \n").unwrap();
        let e = from_settings(Some("kid-1"), None, Some(&file)).unwrap_err();
        assert!(e[0].contains(&file.display().to_string()) && e[0].contains("empty"));
        let missing = dir.path().join("missing");
        let e = from_settings(Some("kid-1"), None, Some(&missing)).unwrap_err();
        assert!(
            e[0].contains("missing") && e[0].contains("cannot be read"),
            "{e:?}"
        );
    }

    #[test]
    fn the_key_never_prints() {
        let bad = "zWNDZM6eQGHW!pSRTPal5e";
        let e = from_settings(Some("kid-1"), Some(&secret(bad)), None).unwrap_err();
        assert!(!e[0].contains("zWNDZM6e"), "{e:?}");
        let eab = from_settings(Some("kid-1"), Some(&secret(KEY)), None)
            .unwrap()
            .unwrap();
        let json = serde_json::to_string(&eab).unwrap();
        assert_eq!(
            json,
            r#"{"kid":"kid-1","hmac_key":"(set)","hmac_key_file":null}"#
        );
        assert!(!format!("{eab:?}").contains("zWNDZM6e"));
        assert_eq!(format!("{:?}", secret(KEY)), "(set)");
    }
}
