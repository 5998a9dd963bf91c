//! dns-persist-01 (draft-ietf-acme-dns-persist, as pebble 2.10 validates it): the standing TXT
//! record at `_validation-persist.<domain>` whose value names the CA
//! (`issuer-domain-name`), the account (`accounturi=`), optionally `policy=wildcard` (needed
//! for a wildcard name) and `persistUntil=` (Unix seconds; the CA refuses the record after
//! it). The operator creates it once (`haproxy-acme dns-persist-record ID` prints it); we never
//! publish or remove it, and only read it ([`check`]) before the CA is told to validate.

pub mod check;

pub use check::{check, issuers, resolver, Found};

/// The label in front of the domain.
pub const LABEL: &str = "_validation-persist";
/// The TTL of the printed zone-file line (the record is meant to stay).
pub const TTL: u32 = 3600;
/// A persistUntil closer than this is warned about (log, metric, `status`).
pub const EXPIRING_WITHIN: i64 = 30 * 86_400;

/// One record a certificate needs: for `domain` (no `*.`), with `policy=wildcard` when the
/// certificate holds `*.domain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub domain: String,
    pub wildcard: bool,
}

impl Wanted {
    /// `_validation-persist.<domain>` (no trailing dot).
    pub fn name(&self) -> String {
        format!("{LABEL}.{}", self.domain)
    }
}

/// The records for a certificate's names: one per domain, the apex and its wildcard sharing
/// one (`policy=wildcard` covers both), in the names' order.
pub fn wanted(names: &[String]) -> Vec<Wanted> {
    let mut out: Vec<Wanted> = Vec::new();
    for n in names {
        let (domain, wildcard) = match n.strip_prefix("*.") {
            Some(d) => (d, true),
            None => (n.as_str(), false),
        };
        match out.iter_mut().find(|w| w.domain == domain) {
            Some(w) => w.wildcard |= wildcard,
            None => out.push(Wanted {
                domain: domain.to_string(),
                wildcard,
            }),
        }
    }
    out
}

/// The TXT value: `issuer; accounturi=URI[; policy=wildcard][; persistUntil=SECONDS]`.
pub fn value(issuer: &str, account: &str, wildcard: bool, until: Option<i64>) -> String {
    let mut v = format!("{issuer}; accounturi={account}");
    if wildcard {
        v.push_str("; policy=wildcard");
    }
    if let Some(t) = until {
        v.push_str(&format!("; persistUntil={t}"));
    }
    v
}

/// The zone-file line for `name` holding `value` (strings of at most 255 bytes, which the CA
/// joins back; `"` and `\` escaped).
pub fn zone_line(name: &str, value: &str) -> String {
    let escaped: String = value
        .chars()
        .flat_map(|c| match c {
            '"' | '\\' => vec!['\\', c],
            c => vec![c],
        })
        .collect();
    let mut strings = Vec::new();
    let mut rest = escaped.as_str();
    while rest.len() > 255 {
        let mut cut = 255;
        // Never split an escape or a character.
        while !rest.is_char_boundary(cut) || rest[..cut].ends_with('\\') {
            cut -= 1;
        }
        strings.push(format!("\"{}\"", &rest[..cut]));
        rest = &rest[cut..];
    }
    strings.push(format!("\"{rest}\""));
    format!("{name}. {TTL} IN TXT {}", strings.join(" "))
}

/// The `status` lines of the records whose persistUntil is within 30 days (or passed), as
/// (certificate id, record name, persistUntil); empty when there are none.
pub fn status_text(expiring: &[(String, String, i64)], now: i64) -> String {
    let mut out = String::new();
    for (id, record, until) in expiring {
        let when = if *until < now {
            format!("passed {} day(s) ago", (now - until) / 86_400)
        } else {
            format!("in {} day(s)", (until - now) / 86_400)
        };
        out.push_str(&format!(
            "{id}: dns-persist-01 record {record}: persistUntil {until} ({when}): the CA refuses it \
             after that; create it again with a later one (`haproxy-acme dns-persist-record {id} \
             --until ...`)\n"
        ));
    }
    out
}

/// What a value says, read as pebble 2.10 reads it (RFC 8659 issue-value syntax: tags case
/// insensitive, whitespace around each part ignored).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Parsed {
    pub issuer: String,
    pub account: Option<String>,
    pub wildcard: bool,
    pub until: Option<i64>,
}

/// Parses a TXT value; `Err` says why it is malformed.
pub fn parse(v: &str) -> Result<Parsed, String> {
    let ws = |s: &str| s.trim_matches([' ', '\t']).to_string();
    let mut parts = v.split(';');
    let issuer = ws(parts.next().unwrap_or_default());
    if issuer.is_empty() {
        return Err("no issuer-domain-name".into());
    }
    let mut p = Parsed {
        issuer,
        ..Parsed::default()
    };
    for part in parts {
        let (tag, value) = part
            .split_once('=')
            .ok_or_else(|| format!("{:?} is not tag=value", ws(part)))?;
        let value = ws(value);
        match ws(tag).to_ascii_lowercase().as_str() {
            "accounturi" => p.account = Some(value),
            "policy" => p.wildcard = value.eq_ignore_ascii_case("wildcard"),
            "persistuntil" => {
                p.until = Some(
                    value
                        .parse()
                        .map_err(|_| format!("persistUntil {value:?} is not Unix seconds"))?,
                )
            }
            _ => {}
        }
    }
    Ok(p)
}

/// Whether `v` lets `account` validate `w` at the CA calling itself one of `issuers` at `now`:
/// `Ok(persistUntil)`, or why not (`None` in the error: the value is for another CA).
pub fn authorizes(
    v: &str,
    issuers: &[String],
    account: &str,
    w: &Wanted,
    now: i64,
) -> Result<Option<i64>, Option<String>> {
    let issuer = ws_issuer(v);
    if !issuers.iter().any(|i| i.eq_ignore_ascii_case(&issuer)) {
        return Err(None);
    }
    let p = parse(v).map_err(|e| Some(format!("malformed: {e}")))?;
    match p.account.as_deref() {
        Some(a) if a == account => {}
        Some(a) => return Err(Some(format!("accounturi is {a}, not ours ({account})"))),
        None => return Err(Some("no accounturi".into())),
    }
    if w.wildcard && !p.wildcard {
        return Err(Some(
            "no policy=wildcard, which the wildcard name needs".into(),
        ));
    }
    match p.until {
        Some(t) if t < now => Err(Some(format!("persistUntil {t} has passed"))),
        t => Ok(t),
    }
}

fn ws_issuer(v: &str) -> String {
    v.split(';')
        .next()
        .unwrap_or_default()
        .trim_matches([' ', '\t'])
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_values_and_zone_lines() {
        let names: Vec<String> = ["a.test", "*.a.test", "www.b.test"]
            .map(String::from)
            .to_vec();
        let w = wanted(&names);
        assert_eq!(
            w,
            [
                Wanted {
                    domain: "a.test".into(),
                    wildcard: true
                },
                Wanted {
                    domain: "www.b.test".into(),
                    wildcard: false
                }
            ]
        );
        assert_eq!(w[0].name(), "_validation-persist.a.test");
        let v = value(
            "letsencrypt.org",
            "https://ca/acct/1",
            true,
            Some(1_900_000_000),
        );
        assert_eq!(
            v,
            "letsencrypt.org; accounturi=https://ca/acct/1; policy=wildcard; persistUntil=1900000000"
        );
        assert_eq!(
            zone_line("_validation-persist.a.test", &v),
            format!("_validation-persist.a.test. 3600 IN TXT \"{v}\"")
        );
        let long = "x".repeat(300);
        let line = zone_line("n", &long);
        assert!(line.ends_with(&format!("\"{}\" \"{}\"", "x".repeat(255), "x".repeat(45))));
    }

    #[test]
    fn values_are_judged_as_pebble_judges_them() {
        let issuers = vec!["pebble.letsencrypt.org".to_string()];
        let acct = "https://ca/acct/1";
        let apex = Wanted {
            domain: "a.test".into(),
            wildcard: false,
        };
        let wild = Wanted {
            domain: "a.test".into(),
            wildcard: true,
        };
        let ok = value("pebble.letsencrypt.org", acct, true, Some(2000));
        assert_eq!(authorizes(&ok, &issuers, acct, &wild, 1000), Ok(Some(2000)));
        assert_eq!(
            authorizes(
                " pebble.letsencrypt.org ;ACCOUNTURI = https://ca/acct/1",
                &issuers,
                acct,
                &apex,
                1000
            ),
            Ok(None)
        );
        let no_policy = value("pebble.letsencrypt.org", acct, false, None);
        assert!(authorizes(&no_policy, &issuers, acct, &wild, 0)
            .unwrap_err()
            .unwrap()
            .contains("policy=wildcard"));
        assert_eq!(
            authorizes(
                &value("letsencrypt.org", acct, true, None),
                &issuers,
                acct,
                &wild,
                0
            ),
            Err(None)
        );
        assert!(authorizes(
            &value("pebble.letsencrypt.org", "https://ca/acct/2", false, None),
            &issuers,
            acct,
            &apex,
            0
        )
        .unwrap_err()
        .unwrap()
        .contains("not ours"));
        assert!(authorizes(&ok, &issuers, acct, &wild, 3000)
            .unwrap_err()
            .unwrap()
            .contains("has passed"));
        assert!(authorizes(
            "pebble.letsencrypt.org; persistUntil=x",
            &issuers,
            acct,
            &apex,
            0
        )
        .unwrap_err()
        .unwrap()
        .contains("malformed"));
    }
}
