//! Certificate names: one normalization (`normalize_name`) and the types that can only be built
//! through it. A `CertId` is what names a certificate everywhere (its file `cert_file_name`,
//! runtime API arguments, the store's keys, operator commands); `Names` is a certificate's name
//! list.

use std::fmt;
use std::net::IpAddr;
use std::ops::Deref;

use haproxy_acme_state::ChallengeType;
use serde::Serialize;

/// A certificate id: one normalized host name (the certificate's first name).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct CertId(String);

impl CertId {
    /// Normalizes `raw` as a host name (see `normalize_name`); the error quotes `raw` and says why
    /// it cannot be a certificate id.
    pub fn parse(raw: &str) -> Result<CertId, String> {
        normalize_name(raw)
            .map(CertId)
            .map_err(|why| format!("{raw:?} {why}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl Deref for CertId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CertId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// As the string (`{id:?}` in messages quotes the name).
impl fmt::Debug for CertId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl PartialEq<str> for CertId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for CertId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// The names of one certificate: at least one, each normalized, none twice; the first is the id.
#[derive(Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Names(Vec<String>);

impl Names {
    /// Normalizes each of `raw`, in order. Every problem is reported (a name that cannot be
    /// used, quoted with why; a name given twice); an empty list is refused.
    pub fn parse<S: AsRef<str>>(raw: impl IntoIterator<Item = S>) -> Result<Names, Vec<String>> {
        Names::collect(raw, |_, raw| normalize_name(raw))
    }

    /// Like [`Names::parse`], also taking wildcard names (`*.` and a host name, kept as
    /// `*.<normalized name>`), except as the first name: the first name is the certificate's
    /// id and file name, which stay plain host names. Whether the certificate's challenge can
    /// validate a wildcard is the caller's to check (see [`CertSpec::wildcard_errors`]).
    pub fn parse_allowing_wildcards<S: AsRef<str>>(
        raw: impl IntoIterator<Item = S>,
    ) -> Result<Names, Vec<String>> {
        Names::collect(raw, |i, raw| {
            if raw.contains('*') {
                normalize_wildcard(raw).and_then(|w| {
                    if i == 0 {
                        Err(
                            "is a wildcard and cannot be the certificate's first name (its id \
                             and file name): put a plain name first, e.g. a.com,*.a.com"
                                .into(),
                        )
                    } else {
                        Ok(w)
                    }
                })
            } else {
                normalize_name(raw)
            }
        })
    }

    /// Normalizes each of `raw` with `normalize` (given its position), reporting every problem
    /// (a name that cannot be used, quoted with why; a name given twice); an empty list is
    /// refused.
    fn collect<S: AsRef<str>>(
        raw: impl IntoIterator<Item = S>,
        normalize: impl Fn(usize, &str) -> Result<String, String>,
    ) -> Result<Names, Vec<String>> {
        let mut errors = Vec::new();
        let mut names: Vec<String> = Vec::new();
        for (i, raw) in raw.into_iter().enumerate() {
            let raw = raw.as_ref();
            match normalize(i, raw) {
                Err(why) => errors.push(format!("{raw:?} {why}")),
                Ok(name) if names.contains(&name) => {
                    errors.push(format!("{name:?} is listed twice in the same certificate"))
                }
                Ok(name) => names.push(name),
            }
        }
        if names.is_empty() && errors.is_empty() {
            errors.push("no names: a certificate needs at least one".into());
        }
        if errors.is_empty() {
            Ok(Names(names))
        } else {
            Err(errors)
        }
    }

    /// The certificate's id: its first name.
    pub fn id(&self) -> CertId {
        CertId(self.0[0].clone())
    }

    pub fn as_slice(&self) -> &[String] {
        &self.0
    }

    pub fn into_vec(self) -> Vec<String> {
        self.0
    }
}

impl Deref for Names {
    type Target = [String];
    fn deref(&self) -> &[String] {
        &self.0
    }
}

// As a list, like the `Vec<String>` it was (log fields print `names = [...]`).
impl fmt::Debug for Names {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One wanted certificate: its names and its id (the first name, also its file name, see
/// `cert_file_name`), and its own options (`profile=NAME`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct CertSpec {
    id: CertId,
    names: Names,
    /// The certificate's own ACME profile (`profile=NAME`), overriding ACME_PROFILE.
    #[serde(skip_serializing_if = "Option::is_none")]
    profile: Option<String>,
    /// How the CA validates its names (`challenge=`; HTTP-01 unless it says).
    #[serde(skip_serializing_if = "ChallengeType::is_http01")]
    challenge: ChallengeType,
}

impl CertSpec {
    pub fn new(names: Names) -> CertSpec {
        CertSpec {
            id: names.id(),
            names,
            profile: None,
            challenge: ChallengeType::Http01,
        }
    }

    /// The same certificate validated with `challenge`.
    pub fn with_challenge(mut self, challenge: ChallengeType) -> CertSpec {
        self.challenge = challenge;
        self
    }

    /// The challenge type its orders answer (`challenge=`, HTTP-01 by default).
    pub fn challenge(&self) -> ChallengeType {
        self.challenge
    }

    /// One error per wildcard name the certificate's challenge cannot validate (only DNS-based
    /// challenges validate wildcards, RFC 8555 §7.1.3), saying what to add.
    pub fn wildcard_errors(&self) -> Vec<String> {
        if self.challenge.validates_wildcards() {
            return Vec::new();
        }
        self.names
            .iter()
            .filter(|n| is_wildcard(n))
            .map(|n| {
                format!(
                    "{n:?} is a wildcard: {} cannot validate wildcards; add challenge=dns-01 to \
                     its certificate (and set DNS_HOOK) or challenge=dns-persist-01, e.g. \"{},{n} challenge=dns-01\"",
                    self.challenge.as_str().to_uppercase(),
                    self.id
                )
            })
            .collect()
    }

    /// The same certificate with its own profile.
    pub fn with_profile(mut self, profile: Option<String>) -> CertSpec {
        self.profile = profile;
        self
    }

    /// The certificate's own profile (`profile=NAME` in its entry), if any.
    pub fn profile(&self) -> Option<&str> {
        self.profile.as_deref()
    }

    /// The profile its orders ask for: its own, else `default` (ACME_PROFILE); `None` lets
    /// the CA choose.
    pub fn profile_or<'a>(&'a self, default: Option<&'a str>) -> Option<&'a str> {
        self.profile().or(default)
    }

    /// The entry as `domains add` keeps it: the names, then the options as `key=value` tokens
    /// (read back by `wanted::parse_certificates`).
    pub fn entry_tokens(&self) -> Vec<String> {
        let mut tokens = self.names.to_vec();
        tokens.extend(self.profile.iter().map(|p| format!("profile={p}")));
        if !self.challenge.is_http01() {
            tokens.push(format!("challenge={}", self.challenge.as_str()));
        }
        tokens
    }

    pub fn id(&self) -> &CertId {
        &self.id
    }

    pub fn names(&self) -> &Names {
        &self.names
    }
}

impl From<Names> for CertSpec {
    fn from(names: Names) -> CertSpec {
        CertSpec::new(names)
    }
}

/// The longest id whose file is `<id>.pem`: its temporary file `.<id>.pem.tmp` (see
/// `installer::write_atomic`) is then 255 bytes, Linux's NAME_MAX.
pub const MAX_PLAIN_FILE_ID: usize = 246;
/// How much of a longer id its shortened file name keeps.
const SHORTENED_PREFIX: usize = 200;

/// The file name of certificate `id` in the certificate directory, as HAProxy loads it and as
/// runtime-API commands name it: `<id>.pem`, or for an id longer than `MAX_PLAIN_FILE_ID`
/// (names of up to 253 characters are valid; `<id>.pem` would pass NAME_MAX with its temporary
/// file) its first 200 characters, `_`, and the first 32 hex digits of SHA-256(id): 237 bytes,
/// the same at every start. `_` is in no id, so a shortened name is never another id's plain
/// one. HAProxy takes the names a certificate serves from the certificate, not its file name.
pub fn cert_file_name(id: &str) -> String {
    if id.len() <= MAX_PLAIN_FILE_ID {
        return format!("{id}.pem");
    }
    // Ids are ASCII (normalized); `get` keeps any other string from panicking at a char
    // boundary.
    let prefix = id.get(..SHORTENED_PREFIX).unwrap_or(id);
    let hash = crate::pki::sha256_hex(id.as_bytes());
    format!("{prefix}_{}.pem", &hash[..32])
}

/// Checks an ACME profile name (ACME_PROFILE, `profile=`): the CA's names are short tokens
/// (Let's Encrypt: `classic`, `tlsserver`, `shortlived`). The error says why.
pub fn check_profile_name(p: &str) -> Result<(), String> {
    if p.is_empty() {
        return Err("is empty: give a profile name such as shortlived".into());
    }
    if p.len() > 64 {
        return Err(format!("is {} characters long (64 at most)", p.len()));
    }
    match p
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        Some(c) => Err(format!(
            "contains {c:?}: a profile name has only letters, digits, '-', '_' and '.'"
        )),
        None => Ok(()),
    }
}

/// Normalizes a wildcard name: `*.` followed by a host name (normalized by `normalize_name`),
/// one leading label `*` and no other `*`. The error says why (it follows the quoted name).
pub fn normalize_wildcard(raw: &str) -> Result<String, String> {
    let base = raw
        .strip_prefix("*.")
        .filter(|b| !b.contains('*'))
        .ok_or("is not a valid wildcard: a wildcard is '*.' followed by a host name, such as *.example.com")?;
    normalize_name(base).map(|b| format!("*.{b}"))
}

/// Whether a normalized name is a wildcard (`*.example.com`).
pub fn is_wildcard(name: &str) -> bool {
    name.starts_with("*.")
}

/// Normalizes one host name for HTTP-01: IDN to punycode, upper case folded, one trailing dot
/// dropped. The error says why the name cannot be used (it follows the quoted name).
pub fn normalize_name(raw: &str) -> Result<String, String> {
    normalize(raw, true)
}

/// Whether `s` is a valid name as it is: lower-case ASCII letters, digits and '-' in labels of
/// 1 to 63 characters, neither starting nor ending with '-' nor punycode (`xn--`, which `idna`
/// decodes to check), at least two labels, the last not all digits (so no IP address), 253
/// characters at most. `idna::domain_to_ascii` returns such a name unchanged and every check of
/// `normalize` passes, so it is taken without them (at 100,000 certificates they were the bulk
/// of parsing DOMAINS_FILE); any other name takes the whole way, errors included. The property
/// tests in `props` hold that both ways give the same answer for every name.
fn is_plain_valid(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() > 253 {
        return false;
    }
    // `last_all_digits`: the label before the last '.' (or the end) is all digits.
    let (mut labels, mut start, mut all_digits, mut last_all_digits) = (0, 0, true, true);
    for i in 0..=b.len() {
        let c = b.get(i).copied().unwrap_or(b'.');
        match c {
            b'.' => {
                let label = &b[start..i];
                let edges_ok = matches!((label.first(), label.last()), (Some(f), Some(l)) if *f != b'-' && *l != b'-');
                if !edges_ok || label.len() > 63 || label.starts_with(b"xn--") {
                    return false;
                }
                labels += 1;
                start = i + 1;
                last_all_digits = all_digits;
                all_digits = true;
            }
            b'a'..=b'z' | b'-' => all_digits = false,
            b'0'..=b'9' => {}
            _ => return false,
        }
    }
    labels >= 2 && !last_all_digits
}

/// `normalize_name`; `plain_fast_path`: a name `is_plain_valid` is taken as it is.
fn normalize(raw: &str, plain_fast_path: bool) -> Result<String, String> {
    let s = raw.strip_suffix('.').unwrap_or(raw);
    if plain_fast_path && is_plain_valid(s) {
        return Ok(s.to_string());
    }
    if s.contains('*') {
        return Err("is a wildcard: HTTP-01 cannot validate wildcards (they need DNS-01)".into());
    }
    let unbracketed = s.trim_start_matches('[').trim_end_matches(']');
    if unbracketed.parse::<IpAddr>().is_ok() {
        return Err("is an IP address, not a DNS host name".into());
    }
    if s.is_empty() {
        return Err("is empty".into());
    }
    let ascii = idna::domain_to_ascii(s)
        .map_err(|_| "is not a valid (internationalized) domain name".to_string())?;
    if ascii.len() > 253 {
        return Err(format!("is {} characters long (253 at most)", ascii.len()));
    }
    if !ascii.contains('.') {
        return Err(
            "is a single label: a certificate name needs a domain, such as example.com".into(),
        );
    }
    for label in ascii.split('.') {
        if label.is_empty() {
            return Err("has an empty label (two dots in a row, or a leading dot)".into());
        }
        if label.len() > 63 {
            return Err(format!(
                "has a label of {} characters (63 at most)",
                label.len()
            ));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return Err(format!(
                "contains {c:?}: only letters, digits, '-' and '.' are allowed"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "has a label {label:?} that starts or ends with '-'"
            ));
        }
    }
    if ascii
        .rsplit('.')
        .next()
        .is_some_and(|tld| tld.chars().all(|c| c.is_ascii_digit()))
    {
        return Err("ends in an all-numeric label, which is not a DNS host name".into());
    }
    Ok(ascii)
}

#[cfg(test)]
mod props;

#[cfg(test)]
mod tests;

/// The spec as JSON (`check-config`). Inline: tidy exempts only inline `#[cfg(test)]` code from
/// the crate owners (`serde_json` is not config's).
#[cfg(test)]
mod json {
    use super::*;

    #[test]
    fn names_are_normalized_in_order_and_name_their_id() {
        let n = Names::parse(["WWW.A.test.", "bücher.a.test"]).unwrap();
        assert_eq!(n.as_slice(), ["www.a.test", "xn--bcher-kva.a.test"]);
        assert_eq!(n.id(), "www.a.test");
        let spec = CertSpec::new(n.clone());
        assert_eq!(spec.id().as_str(), "www.a.test");
        assert_eq!(spec.names(), &n);
        assert_eq!(
            serde_json::to_value(&spec).unwrap(),
            serde_json::json!({"id": "www.a.test", "names": ["www.a.test", "xn--bcher-kva.a.test"]})
        );
    }
}
