//! The wanted set: which certificates the daemon manages. `DOMAINS` (parsed once: the
//! environment does not change while the daemon runs), `DOMAINS_FILE` (read again at each
//! reload), and the certificates added at runtime (`domains add`, kept in the store and passed
//! in by the caller). A name may be wanted only once across the three.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use super::names::{CertId, CertSpec, Names};
use super::options::{dns_hook_missing, tls_alpn_missing};
use super::settings::ConfigError;

/// The sources of the wanted certificates, validated at start-up (see `Config::from_raw`).
#[derive(Debug, Clone)]
pub struct WantedSet {
    /// DOMAINS, parsed once. An error is kept rather than raised for the commands that do not
    /// need the wanted set (`Need::StoreOnly`): it is reported when the set is read.
    domains: Result<Vec<CertSpec>, Vec<String>>,
    domains_file: Option<PathBuf>,
    /// What was read at start-up (DOMAINS, then DOMAINS_FILE; empty for `Need::StoreOnly`).
    initial: Vec<CertSpec>,
    /// DNS_HOOK is set: certificates with `challenge=dns-01` can be validated.
    dns_hook: bool,
    /// TLS_ALPN_LISTEN is set: certificates with `challenge=tls-alpn-01` can be validated.
    tls_alpn: bool,
}

impl WantedSet {
    /// DOMAINS parsed; nothing read yet.
    pub(super) fn new(domains: &str, domains_file: Option<PathBuf>, hooks: [bool; 2]) -> WantedSet {
        let [dns_hook, tls_alpn] = hooks;
        WantedSet {
            domains: parse_domains(domains),
            domains_file,
            initial: Vec::new(),
            dns_hook,
            tls_alpn,
        }
    }

    /// Reads DOMAINS_FILE for `initial`.
    pub(super) fn read_initial(&mut self) -> Result<(), Vec<String>> {
        self.initial = self.read(&[])?;
        Ok(())
    }

    /// The certificates read at start-up: DOMAINS, then DOMAINS_FILE.
    pub fn initial(&self) -> &[CertSpec] {
        &self.initial
    }

    /// Drops `initial` (the daemon reads the set again with the runtime additions and keeps no
    /// second copy: 100,000 certificates are ~25 MiB of names).
    pub fn forget_initial(&mut self) {
        self.initial = Vec::new();
    }

    pub fn domains_file(&self) -> Option<&Path> {
        self.domains_file.as_deref()
    }

    /// The certificates wanted now: DOMAINS, DOMAINS_FILE as it is now, then those `added` at
    /// runtime (`domains add`, kept in the store).
    pub fn read(&self, added: &[Vec<String>]) -> Result<Vec<CertSpec>, Vec<String>> {
        self.combine(read_file(self.domains_file()), added)
    }

    /// Like `read`, with a digest of what was read (DOMAINS, DOMAINS_FILE's bytes, the
    /// additions); the certificates are `None`, not parsed, when that digest is `unchanged_from`.
    /// At 100,000 certificates parsing costs ~0.4 s, reading and hashing the file a few ms
    /// (BENCHMARKS.md, scenario 3: a SIGHUP that changes nothing). An unreadable file (or a bad
    /// DOMAINS) is an error each time, never "unchanged".
    pub fn read_since(
        &self,
        added: &[Vec<String>],
        unchanged_from: Option<u64>,
    ) -> Result<(u64, Option<Vec<CertSpec>>), Vec<String>> {
        let file = read_file(self.domains_file());
        let mut h = std::collections::hash_map::DefaultHasher::new();
        let readable = match (&self.domains, &file) {
            (Err(_), _) | (_, Some((_, Err(_)))) => false,
            (Ok(domains), Some((_, Ok(content)))) => {
                domains.hash(&mut h);
                content.hash(&mut h);
                true
            }
            (Ok(domains), None) => {
                domains.hash(&mut h);
                true
            }
        };
        if !readable {
            return self.combine(file, added).map(|s| (0, Some(s)));
        }
        added.hash(&mut h);
        let digest = h.finish();
        if unchanged_from == Some(digest) {
            return Ok((digest, None));
        }
        self.combine(file, added).map(|s| (digest, Some(s)))
    }

    /// The certificates of DOMAINS, then those of DOMAINS_FILE (`file`: its path and content,
    /// read once, so what is parsed is what was hashed), then `added`; a name in two of them is
    /// an error.
    fn combine(
        &self,
        file: Option<(&Path, std::io::Result<String>)>,
        added: &[Vec<String>],
    ) -> Result<Vec<CertSpec>, Vec<String>> {
        let mut errors = Vec::new();
        let mut specs = match &self.domains {
            Ok(specs) => specs.clone(),
            Err(e) => {
                errors.extend(e.iter().cloned());
                Vec::new()
            }
        };
        if let Some((path, content)) = file {
            match content {
                Err(e) => errors.push(format!("DOMAINS_FILE {}: {e}", path.display())),
                Ok(content) => match parse_domains_file(&content) {
                    Err(e) => errors.extend(e),
                    Ok(more) => {
                        // name -> id, for the names of DOMAINS only (each source is checked on
                        // its own).
                        let in_domains = by_name(&specs);
                        for spec in &more {
                            for name in spec.names().iter() {
                                if let Some(id) = in_domains.get(name.as_str()) {
                                    errors.push(format!(
                                        "DOMAINS_FILE: {name:?} is listed twice (also in certificate {id:?} of DOMAINS)"
                                    ));
                                }
                            }
                        }
                        specs.extend(more);
                    }
                },
            }
        }
        if !added.is_empty() {
            let entries: Vec<String> = added.iter().map(|names| names.join(",")).collect();
            match parse_certificates(
                entries
                    .iter()
                    .map(|e| (format!("added certificate {e:?}"), e.as_str())),
                "added certificates",
            ) {
                Err(e) => errors.extend(e),
                Ok(more) => {
                    let configured = by_name(&specs);
                    for spec in &more {
                        for name in spec.names().iter() {
                            if let Some(id) = configured.get(name.as_str()) {
                                errors.push(format!(
                                    "{name:?} was added at runtime (certificate {:?}) and is also in \
                                     certificate {id:?} of DOMAINS or DOMAINS_FILE: run \
                                     `haproxy-acme domains remove {}` or remove it from the configuration",
                                    spec.id(),
                                    spec.id()
                                ));
                            }
                        }
                    }
                    specs.extend(more);
                }
            }
        }
        if !self.dns_hook {
            errors.extend(specs.iter().filter_map(dns_hook_missing));
        }
        if !self.tls_alpn {
            errors.extend(specs.iter().filter_map(tls_alpn_missing));
        }
        if errors.is_empty() {
            Ok(specs)
        } else {
            Err(errors)
        }
    }
}

/// name -> id of the certificate that lists it.
fn by_name(specs: &[CertSpec]) -> HashMap<&str, &str> {
    specs
        .iter()
        .flat_map(|s| s.names().iter().map(move |n| (n.as_str(), s.id().as_str())))
        .collect()
}

/// DOMAINS_FILE's path and content, read once: what is parsed is what was hashed.
fn read_file(path: Option<&Path>) -> Option<(&Path, std::io::Result<String>)> {
    path.map(|p| (p, std::fs::read_to_string(p)))
}

/// The error for a daemon with no certificate to manage.
pub fn nothing_to_manage() -> ConfigError {
    ConfigError(vec![
        "DOMAINS is empty: list the certificates to obtain, e.g. DOMAINS=\"a.com,www.a.com;b.com\" \
         (or in DOMAINS_FILE, one per line, or add one with `haproxy-acme domains add a.com`)"
            .into(),
    ])
}

/// Parses `DOMAINS`: `;` separates certificates, `,` the names of one certificate, the first
/// name being its id. Whitespace and empty entries are ignored. Every bad name is reported.
pub fn parse_domains(s: &str) -> Result<Vec<CertSpec>, Vec<String>> {
    parse_certificates(
        s.split(';')
            .map(|entry| (format!("DOMAINS entry {:?}", entry.trim()), entry)),
        "DOMAINS",
    )
}

/// Parses the content of `DOMAINS_FILE`: one certificate per line in the syntax of `DOMAINS`
/// (`;` also separates certificates), blank lines and `#` comments ignored. Errors name the line.
pub fn parse_domains_file(content: &str) -> Result<Vec<CertSpec>, Vec<String>> {
    let entries = content.lines().enumerate().flat_map(|(i, line)| {
        let line = line.split('#').next().unwrap_or("");
        line.split(';')
            .map(move |entry| (format!("DOMAINS_FILE line {}", i + 1), entry))
    });
    parse_certificates(entries, "DOMAINS_FILE")
}

/// Parses certificate entries, each `(where it is, "name,name,...")`, each through
/// `Names::parse`, checking that no name is in two certificates. `source` prefixes those errors.
fn parse_certificates<'a>(
    entries: impl IntoIterator<Item = (String, &'a str)>,
    source: &str,
) -> Result<Vec<CertSpec>, Vec<String>> {
    let mut errors = Vec::new();
    let mut specs = Vec::new();
    // name -> id of the certificate that lists it first
    let mut seen: HashMap<String, CertId> = HashMap::new();
    for (where_, entry) in entries {
        let (raw, options) = super::options::split_entry(entry);
        if raw.is_empty() && options.is_empty() {
            continue;
        }
        let options = match super::options::parse_options(&options) {
            Ok(o) => o,
            Err(e) => {
                errors.extend(e.into_iter().map(|e| format!("{where_}: {e}")));
                continue;
            }
        };
        let names = match Names::parse_allowing_wildcards(&raw) {
            Ok(names) => names,
            Err(e) => {
                errors.extend(e.into_iter().map(|e| format!("{where_}: {e}")));
                continue;
            }
        };
        let spec = CertSpec::new(names)
            .with_profile(options.profile)
            .with_challenge(options.challenge.unwrap_or_default());
        let wildcards = spec.wildcard_errors();
        if !wildcards.is_empty() {
            errors.extend(wildcards.into_iter().map(|e| format!("{where_}: {e}")));
            continue;
        }
        for name in spec.names().iter() {
            match seen.get(name) {
                Some(first) => errors.push(format!(
                    "{source}: {name:?} is listed twice (also in certificate {first:?})"
                )),
                None => {
                    seen.insert(name.clone(), spec.id().clone());
                }
            }
        }
        specs.push(spec);
    }
    if errors.is_empty() {
        Ok(specs)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::RawSettings;
    use crate::config::{Config, Need};

    fn names(specs: &[CertSpec]) -> Vec<Vec<&str>> {
        specs
            .iter()
            .map(|s| s.names().iter().map(String::as_str).collect())
            .collect()
    }

    #[test]
    fn domains_syntax_of_the_old_stack() {
        let table: &[(&str, Vec<Vec<&str>>)] = &[
            (
                "a.com,www.a.com;b.com",
                vec![vec!["a.com", "www.a.com"], vec!["b.com"]],
            ),
            (
                " a.com , www.a.com ; ; b.com ;",
                vec![vec!["a.com", "www.a.com"], vec!["b.com"]],
            ),
            ("A.COM.", vec![vec!["a.com"]]),
            (",,a.com,,;", vec![vec!["a.com"]]),
            ("bücher.example", vec![vec!["xn--bcher-kva.example"]]),
            ("", vec![]),
            (" ; ", vec![]),
        ];
        for (input, want) in table {
            let got = parse_domains(input).unwrap_or_else(|e| panic!("{input:?}: {e:?}"));
            assert_eq!(&names(&got), want, "{input:?}");
            for s in &got {
                assert_eq!(s.id().as_str(), s.names()[0]);
            }
        }
    }

    #[test]
    fn bad_names_are_named_with_the_reason() {
        let table: &[(&str, &str)] = &[
            ("*.a.com", "wildcard"),
            ("a.com,*.a.com", "wildcard"),
            ("192.0.2.1", "IP address"),
            ("[::1]", "IP address"),
            ("localhost", "single label"),
            ("a..com", "empty label"),
            ("-a.com", "starts or ends with '-'"),
            ("a_b.com", "contains '_'"),
            ("a.123", "all-numeric"),
            (
                "a.com;b.com,a.com",
                "listed twice (also in certificate \"a.com\")",
            ),
            ("a.com,A.com", "twice in the same certificate"),
        ];
        for (input, reason) in table {
            let errs = parse_domains(input).expect_err(input);
            assert!(
                errs.iter().any(|e| e.contains(reason)),
                "{input:?}: {errs:?}"
            );
        }
        let long_label = format!("{}.com", "a".repeat(64));
        assert!(parse_domains(&long_label).unwrap_err()[0].contains("63 at most"));
        let long_name = format!("{}com", "abcdefghi.".repeat(26));
        assert!(parse_domains(&long_name).unwrap_err()[0].contains("253 at most"));
        // Every bad entry is reported, not only the first, each with where it is.
        let errs = parse_domains("*.a.com;1.2.3.4;ok.com").unwrap_err();
        assert_eq!(errs.len(), 2);
        assert!(
            errs[1].starts_with("DOMAINS entry \"1.2.3.4\": \"1.2.3.4\" is an IP address"),
            "{errs:?}"
        );
    }

    #[test]
    fn domains_file_lines_comments_and_errors_by_line() {
        let specs =
            parse_domains_file("# shop\na.com, www.a.com\n\n b.com # legacy\nc.com;d.com\n")
                .unwrap();
        assert_eq!(
            names(&specs),
            vec![
                vec!["a.com", "www.a.com"],
                vec!["b.com"],
                vec!["c.com"],
                vec!["d.com"]
            ]
        );
        let errs = parse_domains_file("a.com\n*.b.com\nc.com,a.com\n").unwrap_err();
        assert!(
            errs[0].starts_with("DOMAINS_FILE line 2: \"*.b.com\" is a wildcard"),
            "{errs:?}"
        );
        assert!(errs[1].contains("\"a.com\" is listed twice"), "{errs:?}");
    }

    /// A daemon configuration with DOMAINS="a.com" and a DOMAINS_FILE holding `content`.
    fn with_domains_file(content: &str) -> (tempfile::TempDir, PathBuf, WantedSet) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("domains");
        std::fs::write(&file, content).unwrap();
        let raw = RawSettings {
            domains: Some("a.com".into()),
            domains_file: Some(file.clone()),
            ..Default::default()
        };
        let (c, w) = Config::from_raw(&raw, Need::Daemon).unwrap();
        assert_eq!(c.domains_file.as_deref(), Some(file.as_path()));
        assert_eq!(w.domains_file(), Some(file.as_path()));
        (dir, file, w)
    }

    #[test]
    fn a_re_read_of_the_same_sources_is_not_parsed_again() {
        let (_dir, file, w) = with_domains_file("b.com\n");
        let (d1, specs) = w.read_since(&[], None).unwrap();
        assert_eq!(names(&specs.unwrap()), vec![vec!["a.com"], vec!["b.com"]]);
        assert!(w.read_since(&[], Some(d1)).unwrap().1.is_none());
        // A comment is a change of bytes: parsed (the specs then say nothing changed).
        std::fs::write(&file, "# x\nb.com\n").unwrap();
        let (d2, specs) = w.read_since(&[], Some(d1)).unwrap();
        assert_ne!(d1, d2);
        assert_eq!(names(&specs.unwrap()), vec![vec!["a.com"], vec!["b.com"]]);
        // So is an addition at runtime.
        let added = [vec!["c.com".to_string()]];
        assert!(w.read_since(&added, Some(d2)).unwrap().1.is_some());
        // An unreadable file is an error every time, whatever was read before.
        std::fs::remove_file(&file).unwrap();
        assert!(w.read_since(&[], Some(d2)).is_err());
    }

    #[test]
    fn domains_and_domains_file_combine_without_duplicates() {
        let (_dir, file, w) = with_domains_file("b.com\n");
        assert_eq!(names(w.initial()), vec![vec!["a.com"], vec!["b.com"]]);
        std::fs::write(&file, "c.com\nwww.a.com,a.com\n").unwrap();
        let errs = w.read(&[]).unwrap_err();
        assert!(
            errs[0].contains("also in certificate \"a.com\" of DOMAINS"),
            "{errs:?}"
        );
        std::fs::remove_file(&file).unwrap();
        assert!(w.read(&[]).unwrap_err()[0].starts_with("DOMAINS_FILE "));
        // DOMAINS_FILE alone is enough.
        std::fs::write(&file, "b.com\n").unwrap();
        let only_file = RawSettings {
            domains: None,
            domains_file: Some(file),
            ..Default::default()
        };
        assert!(Config::from_raw(&only_file, Need::Daemon).is_ok());
        let mut w = w;
        w.forget_initial();
        assert!(w.initial().is_empty());
    }

    #[test]
    fn added_certificates_join_the_configured_ones_without_sharing_a_name() {
        let (_, w) = Config::from_raw(
            &RawSettings {
                domains: Some("a.test,www.a.test".into()),
                ..Default::default()
            },
            Need::Daemon,
        )
        .unwrap();
        let specs = w
            .read(&[vec!["b.test".into(), "www.b.test".into()]])
            .unwrap();
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[1].id().as_str(), "b.test");
        let e = w
            .read(&[vec!["b.test".into(), "www.a.test".into()]])
            .unwrap_err();
        assert!(
            e[0].contains("www.a.test") && e[0].contains("domains remove b.test"),
            "{e:?}"
        );
    }

    #[test]
    fn a_bad_domains_is_reported_when_the_set_is_read_by_a_store_only_command() {
        let raw = RawSettings {
            domains: Some("*.a.test".into()),
            ..Default::default()
        };
        assert!(Config::from_raw(&raw, Need::Daemon).is_err());
        let (_, w) = Config::from_raw(&raw, Need::StoreOnly).unwrap();
        assert!(w.initial().is_empty());
        assert!(w.read(&[]).unwrap_err()[0].contains("wildcard"));
        assert!(w.read_since(&[], Some(0)).is_err());
    }
}
