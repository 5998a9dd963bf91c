//! ACME profiles (draft-aaron-acme-profiles): the start-up checks of the configured ones
//! (ACME_PROFILE and each certificate's `profile=NAME`) against what the CA offers, and Let's
//! Encrypt's 25-name limit of its new profiles. Pure: the directory is fetched by the caller
//! (`acme::directory`).

use std::collections::BTreeMap;

use super::names::CertSpec;

/// Let's Encrypt's profiles that allow at most [`LE_SHORT_PROFILE_MAX_NAMES`] names per
/// certificate (`classic` allows 100).
pub const LE_SHORT_PROFILES: [&str; 2] = ["tlsserver", "shortlived"];
pub const LE_SHORT_PROFILE_MAX_NAMES: usize = 25;

/// Whether `directory` is one of Let's Encrypt's (a host under letsencrypt.org).
pub fn is_lets_encrypt(directory: &str) -> bool {
    directory
        .strip_prefix("https://")
        .and_then(|rest| rest.split(['/', ':']).next())
        .is_some_and(|host| host == "letsencrypt.org" || host.ends_with(".letsencrypt.org"))
}

/// `ACME_PROFILE`: unset or empty is none; otherwise a valid profile name (the error names the
/// setting and says why). With the certificates read at start-up (`initial`), Let's Encrypt's
/// 25-name limit is checked too (`name_limit_errors`).
pub(super) fn from_settings(
    raw: Option<&str>,
    directory: &str,
    initial: Option<&[CertSpec]>,
) -> Result<Option<String>, Vec<String>> {
    let profile = match raw.map(str::trim) {
        None | Some("") => None,
        Some(p) => match super::names::check_profile_name(p) {
            Ok(()) => Some(p.to_string()),
            Err(why) => return Err(vec![format!("ACME_PROFILE {p:?} {why}")]),
        },
    };
    let errors = name_limit_errors(directory, profile.as_deref(), initial.unwrap_or_default());
    if errors.is_empty() {
        Ok(profile)
    } else {
        Err(errors)
    }
}

/// For a Let's Encrypt directory: each certificate with more than 25 names whose profile is
/// `tlsserver` or `shortlived` (its own, else `default`), one line each.
pub fn name_limit_errors(
    directory: &str,
    default: Option<&str>,
    specs: &[CertSpec],
) -> Vec<String> {
    if !is_lets_encrypt(directory) {
        return Vec::new();
    }
    specs
        .iter()
        .filter_map(|s| {
            let p = s.profile_or(default)?;
            let from = if s.profile().is_some() {
                "its profile= option"
            } else {
                "ACME_PROFILE"
            };
            (LE_SHORT_PROFILES.contains(&p) && s.names().len() > LE_SHORT_PROFILE_MAX_NAMES).then(
                || {
                    format!(
                        "certificate {:?} has {} names: Let's Encrypt's profile {p:?} (from \
                         {from}) allows {LE_SHORT_PROFILE_MAX_NAMES} at most; split it into \
                         several certificates or give it profile=classic",
                        s.id(),
                        s.names().len()
                    )
                },
            )
        })
        .collect()
}

/// The configured profiles the CA does not offer, one line each, naming the offered ones.
/// `offered`: the directory's `meta.profiles` (name → description), `None` when it has none.
pub fn unoffered_errors(
    offered: Option<&BTreeMap<String, String>>,
    default: Option<&str>,
    specs: &[CertSpec],
) -> Vec<String> {
    // Each profile once, with who asks for it.
    let mut wanted: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    if let Some(p) = default {
        wanted.entry(p).or_default().push("ACME_PROFILE".into());
    }
    for s in specs {
        if let Some(p) = s.profile() {
            wanted
                .entry(p)
                .or_default()
                .push(format!("certificate {:?}", s.id()));
        }
    }
    let offered_list = offered
        .filter(|o| !o.is_empty())
        .map(|o| o.keys().map(String::as_str).collect::<Vec<_>>().join(", "));
    wanted
        .into_iter()
        .filter(|(p, _)| !offered.is_some_and(|o| o.contains_key(*p)))
        .map(|(p, who)| {
            let by = by_whom(&who);
            match &offered_list {
                Some(list) => {
                    format!("profile {p:?} ({by}) is not offered by the CA: it offers {list}")
                }
                None => format!(
                    "profile {p:?} ({by}) is not offered by the CA: its directory offers no \
                     profiles (unset ACME_PROFILE and remove profile= to use the CA's default)"
                ),
            }
        })
        .collect()
}

/// "ACME_PROFILE", "certificate \"a.test\"", or the first three and how many more.
fn by_whom(who: &[String]) -> String {
    const SHOWN: usize = 3;
    let mut s = who
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if who.len() > SHOWN {
        s.push_str(&format!(" and {} more certificates", who.len() - SHOWN));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::RawSettings;
    use crate::config::{parse_domains, Config, Need};

    const LE: &str = "https://acme-v02.api.letsencrypt.org/directory";

    fn offered(names: &[&str]) -> BTreeMap<String, String> {
        names
            .iter()
            .map(|n| (n.to_string(), format!("the {n} profile")))
            .collect()
    }

    #[test]
    fn profiles_the_ca_does_not_offer_are_named_with_the_offered_ones() {
        let specs = parse_domains("a.test profile=shortlived;b.test profile=bogus;c.test").unwrap();
        let o = offered(&["classic", "shortlived", "tlsserver"]);
        assert!(unoffered_errors(Some(&o), Some("classic"), &specs[..1]).is_empty());
        let e = unoffered_errors(Some(&o), Some("nine-days"), &specs);
        assert_eq!(e.len(), 2, "{e:?}");
        assert_eq!(
            e[0],
            "profile \"bogus\" (certificate \"b.test\") is not offered by the CA: it offers \
             classic, shortlived, tlsserver"
        );
        assert!(
            e[1].starts_with("profile \"nine-days\" (ACME_PROFILE)"),
            "{e:?}"
        );
        // No profile configured: nothing to check, whatever the CA offers.
        assert!(unoffered_errors(None, None, &specs[2..]).is_empty());
        // A directory without profiles.
        for none in [None, Some(&BTreeMap::new())] {
            let e = unoffered_errors(none, Some("classic"), &[]);
            assert_eq!(e.len(), 1);
            assert!(e[0].contains("offers no profiles"), "{e:?}");
        }
    }

    #[test]
    fn many_certificates_asking_for_one_profile_are_one_line() {
        let specs = parse_domains(
            "a.test profile=x;b.test profile=x;c.test profile=x;d.test profile=x;e.test profile=x",
        )
        .unwrap();
        let e = unoffered_errors(Some(&offered(&["classic"])), None, &specs);
        assert_eq!(e.len(), 1);
        assert!(
            e[0].contains("certificate \"c.test\" and 2 more certificates"),
            "{e:?}"
        );
    }

    #[test]
    fn lets_encrypt_short_profiles_take_25_names_at_most() {
        let names = |n: usize, opt: &str| {
            let names: Vec<String> = (0..n).map(|i| format!("n{i}.a.test")).collect();
            format!("{} {opt}", names.join(","))
        };
        let specs = parse_domains(&format!(
            "{};{};{};{}",
            names(26, "profile=shortlived"),
            names(25, "").replace("n", "m"),
            names(26, "profile=classic").replace("n", "k"),
            names(30, "").replace("n", "j"),
        ))
        .unwrap();
        let e = name_limit_errors(LE, Some("tlsserver"), &specs);
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].starts_with("certificate \"n0.a.test\" has 26 names")
                && e[0].contains("\"shortlived\" (from its profile= option) allows 25 at most"),
            "{e:?}"
        );
        assert!(
            e[1].starts_with("certificate \"j0.a.test\" has 30 names"),
            "{e:?}"
        );
        assert!(e[1].contains("(from ACME_PROFILE)"), "{e:?}");
        // Without a default the CA's (classic) applies; other CAs have their own limits.
        assert_eq!(name_limit_errors(LE, None, &specs).len(), 1);
        assert!(
            name_limit_errors("https://localhost:14000/dir", Some("tlsserver"), &specs).is_empty()
        );
    }

    #[test]
    fn acme_profile_is_checked_and_the_25_name_limit_is_a_start_error() {
        let raw = |profile: &str, dir: &str, domains: &str| RawSettings {
            domains: Some(domains.into()),
            acme_profile: Some(profile.into()),
            acme_directory: Some(dir.into()),
            ..Default::default()
        };
        let (c, _) = Config::from_raw(&raw(" shortlived ", "", "a.com"), Need::Daemon).unwrap();
        assert_eq!(c.acme_profile.as_deref(), Some("shortlived"));
        let (c, _) = Config::from_raw(&raw("", "", "a.com"), Need::Daemon).unwrap();
        assert_eq!(c.acme_profile, None, "empty is unset");
        let e = Config::from_raw(&raw("short lived", "", "a.com"), Need::Daemon).unwrap_err();
        assert!(
            e.0[0].starts_with("ACME_PROFILE \"short lived\" contains ' '"),
            "{e}"
        );
        let many: Vec<String> = (0..26).map(|i| format!("n{i}.a.com")).collect();
        let many = many.join(",");
        let le = crate::config::LETSENCRYPT_PRODUCTION;
        let e = Config::from_raw(&raw("tlsserver", le, &many), Need::Daemon).unwrap_err();
        assert!(e.0[0].contains("has 26 names"), "{e}");
        assert!(Config::from_raw(&raw("classic", le, &many), Need::Daemon).is_ok());
        assert!(Config::from_raw(
            &raw("tlsserver", "https://ca.test/dir", &many),
            Need::Daemon
        )
        .is_ok());
        // Commands that only read the store are not refused for it.
        assert!(Config::from_raw(&raw("tlsserver", le, &many), Need::StoreOnly).is_ok());
    }
}
