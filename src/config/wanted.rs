//! The wanted set: which certificates the daemon manages. `DOMAINS` (parsed once: the
//! environment does not change while the daemon runs), `DOMAINS_FILE` (read again at each
//! reload), and the certificates added at runtime (`domains add`, kept in the store and passed
//! in by the caller). A name may be wanted only once across the three.

use std::collections::hash_map::Entry;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use fxhash::FxHashMap;
use xxhash_rust::xxh3::Xxh3;

use super::names::{CertId, CertSpec, Names};
use super::options::{dns_hook_missing, split_ascii, tls_alpn_missing};
use super::settings::ConfigError;

mod index;
pub use index::{Changes, Reading};

/// The sources of the wanted certificates, validated at start-up (see `Config::from_raw`).
pub struct WantedSet {
    /// DOMAINS, parsed once. An error is kept rather than raised for the commands that do not
    /// need the wanted set (`Need::StoreOnly`): it is reported when the set is read.
    domains: Result<Vec<CertSpec>, Vec<String>>,
    domains_file: Option<PathBuf>,
    /// What was read at start-up (DOMAINS, then DOMAINS_FILE; empty for `Need::StoreOnly`).
    initial: Vec<CertSpec>,
    /// The digest of the sources `initial` was read from (`sources`).
    initial_sources: u64,
    /// DNS_HOOK is set: certificates with `challenge=dns-01` can be validated.
    dns_hook: bool,
    /// TLS_ALPN_LISTEN is set: certificates with `challenge=tls-alpn-01` can be validated.
    tls_alpn: bool,
    /// What the last read in full (or by its changes) keeps to read the next one by what
    /// changed (see [`index`]); `None` before, or when that read was refused.
    index: Mutex<Option<index::Index>>,
}

impl fmt::Debug for WantedSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WantedSet")
            .field("domains", &self.domains)
            .field("domains_file", &self.domains_file)
            .field("initial", &self.initial.len())
            .field("dns_hook", &self.dns_hook)
            .field("tls_alpn", &self.tls_alpn)
            .finish_non_exhaustive()
    }
}

/// The certificates read at start-up and the digest of their sources ([`WantedSet::take_initial`]).
#[derive(Debug, Default)]
pub struct Initial {
    pub sources: u64,
    pub specs: Vec<CertSpec>,
}

/// DOMAINS_FILE as read: its path and content, read once, so what is parsed is what was hashed.
type File<'a> = Option<(&'a Path, std::io::Result<String>)>;

impl WantedSet {
    /// DOMAINS parsed; nothing read yet.
    pub(super) fn new(domains: &str, domains_file: Option<PathBuf>, hooks: [bool; 2]) -> WantedSet {
        let [dns_hook, tls_alpn] = hooks;
        WantedSet {
            domains: parse_domains(domains),
            domains_file,
            initial: Vec::new(),
            initial_sources: 0,
            dns_hook,
            tls_alpn,
            index: Mutex::new(None),
        }
    }

    /// Reads DOMAINS_FILE for `initial`.
    pub(super) fn read_initial(&mut self) -> Result<(), Vec<String>> {
        let (sources, specs) = self.read_since(&[], None)?;
        self.initial = specs.unwrap_or_default();
        self.initial_sources = sources;
        Ok(())
    }

    /// The certificates read at start-up: DOMAINS, then DOMAINS_FILE.
    pub fn initial(&self) -> &[CertSpec] {
        &self.initial
    }

    /// Takes `initial` out, with the digest of its sources: the daemon hands it to the
    /// reconciler ([`WantedSet::still_reads_as`] says whether it is still what a read gives) and
    /// keeps no second copy (100,000 certificates are ~25 MiB of names).
    pub fn take_initial(&mut self) -> Initial {
        Initial {
            sources: self.initial_sources,
            specs: std::mem::take(&mut self.initial),
        }
    }

    pub fn domains_file(&self) -> Option<&Path> {
        self.domains_file.as_deref()
    }

    /// The certificates wanted now: DOMAINS, DOMAINS_FILE as it is now, then those `added` at
    /// runtime (`domains add`, kept in the store).
    pub fn read(&self, added: &[Vec<String>]) -> Result<Vec<CertSpec>, Vec<String>> {
        self.combine(&read_file(self.domains_file()), added)
            .map(|(specs, _)| specs)
    }

    /// Like `read`, with a digest of what was read (DOMAINS, DOMAINS_FILE's bytes, the
    /// additions); the certificates are `None`, not parsed, when that digest is `unchanged_from`.
    /// At 100,000 certificates parsing costs ~40 ms, reading and hashing the file a few ms
    /// (BENCHMARKS.md, scenario 3: a SIGHUP that changes nothing). An unreadable file (or a bad
    /// DOMAINS) is an error each time, never "unchanged".
    pub fn read_since(
        &self,
        added: &[Vec<String>],
        unchanged_from: Option<u64>,
    ) -> Result<(u64, Option<Vec<CertSpec>>), Vec<String>> {
        let file = read_file(self.domains_file());
        let Some(digest) = self.sources(&file, added) else {
            return self.combine(&file, added).map(|(s, _)| (0, Some(s)));
        };
        if unchanged_from == Some(digest) {
            return Ok((digest, None));
        }
        self.read_all(file, added, digest)
            .map(|s| (digest, Some(s)))
    }

    /// A digest of the sources (DOMAINS, DOMAINS_FILE's bytes, the additions); `None` when
    /// DOMAINS is bad or DOMAINS_FILE unreadable.
    fn sources(&self, file: &File, added: &[Vec<String>]) -> Option<u64> {
        let mut h = self.digest_start()?;
        match file {
            None => Some(Self::digest_end(h, false, added)),
            Some((_, Ok(content))) => {
                h.update(content.as_bytes());
                Some(Self::digest_end(h, true, added))
            }
            Some((_, Err(_))) => None,
        }
    }

    /// The digest of the sources DOMAINS, DOMAINS_FILE's bytes and `added`, begun: DOMAINS
    /// hashed; `None` when DOMAINS is bad. Then every byte of DOMAINS_FILE (if any), in
    /// order, in as many parts as it comes, and [`WantedSet::digest_end`].
    fn digest_start(&self) -> Option<Xxh3> {
        let mut h = Xxh3::new();
        self.domains.as_ref().ok()?.hash(&mut h);
        Some(h)
    }

    /// The digest begun by [`WantedSet::digest_start`], with DOMAINS_FILE's bytes in it when
    /// there is one (`file`), and `added`.
    fn digest_end(mut h: Xxh3, file: bool, added: &[Vec<String>]) -> u64 {
        if file {
            // The end of the file's content, as `str`'s `Hash` marks it.
            h.write_u8(0xff);
        }
        added.hash(&mut h);
        h.finish()
    }

    /// Reads everything in `file` and `added` (of digest `sources`), and keeps the index of it
    /// for the next read.
    fn read_all(
        &self,
        file: File,
        added: &[Vec<String>],
        sources: u64,
    ) -> Result<Vec<CertSpec>, Vec<String>> {
        let (specs, configured) = self.combine(&file, added)?;
        let content = match file {
            Some((_, Ok(content))) => content,
            _ => String::new(),
        };
        let index = index::Index::of(sources, content, &specs[..configured], added);
        *self.index.lock().unwrap_or_else(PoisonError::into_inner) = index;
        Ok(specs)
    }

    /// The certificates of DOMAINS, then those of DOMAINS_FILE, then `added`, and how many the
    /// first two list; a name in two of them is an error.
    fn combine(
        &self,
        file: &File,
        added: &[Vec<String>],
    ) -> Result<(Vec<CertSpec>, usize), Vec<String>> {
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
                Ok(content) => match parse_domains_file(content) {
                    Err(e) => errors.extend(e),
                    Ok(more) => {
                        // name -> id, for the names of DOMAINS only (each source is checked on
                        // its own).
                        let in_domains = by_name(&specs);
                        for spec in more.iter().filter(|_| !in_domains.is_empty()) {
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
        let configured = specs.len();
        if !added.is_empty() {
            match parse_added(added) {
                Err(e) => errors.extend(e),
                Ok(more) => {
                    errors.extend(also_configured(&specs, &more));
                    specs.extend(more);
                }
            }
        }
        errors.extend(self.unvalidated(&specs));
        if errors.is_empty() {
            Ok((specs, configured))
        } else {
            Err(errors)
        }
    }

    /// One error per certificate whose challenge has nothing to validate it with (DNS-01
    /// without DNS_HOOK, TLS-ALPN-01 without TLS_ALPN_LISTEN).
    fn unvalidated<'a>(&self, specs: &'a [CertSpec]) -> impl Iterator<Item = String> + 'a {
        let (dns_hook, tls_alpn) = (self.dns_hook, self.tls_alpn);
        let dns = specs
            .iter()
            .filter(move |_| !dns_hook)
            .filter_map(dns_hook_missing);
        let tls = specs
            .iter()
            .filter(move |_| !tls_alpn)
            .filter_map(tls_alpn_missing);
        dns.chain(tls)
    }
}

/// Parses the certificates added at runtime (`domains add`: names and options as tokens).
fn parse_added(added: &[Vec<String>]) -> Result<Vec<CertSpec>, Vec<String>> {
    let entries: Vec<String> = added.iter().map(|names| names.join(",")).collect();
    parse_certificates(
        entries.iter().map(|e| (Place::Added(e), e.as_str())),
        "added certificates",
    )
}

/// name -> id of the certificate that lists it (the last one, for a name listed twice).
fn by_name(specs: &[CertSpec]) -> FxHashMap<&str, &str> {
    specs
        .iter()
        .flat_map(|s| s.names().iter().map(move |n| (n.as_str(), s.id().as_str())))
        .collect()
}

/// One error per name of the certificates `added` at runtime that a `configured` one (DOMAINS,
/// DOMAINS_FILE) also lists, in the order of `added`. A map of the few added names, not of the
/// configured ones (100,000 certificates: one map of 200,000 names at each `domains add`).
fn also_configured(configured: &[CertSpec], added: &[CertSpec]) -> Vec<String> {
    // added name -> the configured certificate that lists it too (the last one).
    let mut also: FxHashMap<&str, Option<&CertId>> = added
        .iter()
        .flat_map(|s| s.names().iter().map(|n| (n.as_str(), None)))
        .collect();
    for spec in configured {
        for name in spec.names().iter() {
            if let Some(slot) = also.get_mut(name.as_str()) {
                *slot = Some(spec.id());
            }
        }
    }
    let mut errors = Vec::new();
    for spec in added {
        for name in spec.names().iter() {
            if let Some(Some(id)) = also.get(name.as_str()) {
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
    errors
}

/// DOMAINS_FILE's path and content, read once: what is parsed is what was hashed.
fn read_file(path: Option<&Path>) -> File<'_> {
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
            .map(|entry| (Place::Domains(entry.trim()), entry)),
        "DOMAINS",
    )
}

/// Parses the content of `DOMAINS_FILE`: one certificate per line in the syntax of `DOMAINS`
/// (`;` also separates certificates), blank lines and `#` comments ignored. Errors name the line.
pub fn parse_domains_file(content: &str) -> Result<Vec<CertSpec>, Vec<String>> {
    let entries = content.lines().enumerate().flat_map(|(i, line)| {
        let line = split_ascii(line, b'#').next().unwrap_or("");
        split_ascii(line, b';').map(move |entry| (Place::Line(i + 1), entry))
    });
    parse_certificates(entries, "DOMAINS_FILE")
}

/// Where a certificate entry is, for its errors: written out only for an error (100,000 lines
/// of DOMAINS_FILE are not 100,000 strings).
#[derive(Clone, Copy)]
enum Place<'a> {
    /// An entry of DOMAINS (trimmed).
    Domains(&'a str),
    /// A line of DOMAINS_FILE, from 1.
    Line(usize),
    /// A certificate added at runtime: its names and options, comma-joined.
    Added(&'a str),
}

impl fmt::Display for Place<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::Domains(entry) => write!(f, "DOMAINS entry {entry:?}"),
            Place::Line(n) => write!(f, "DOMAINS_FILE line {n}"),
            Place::Added(entry) => write!(f, "added certificate {entry:?}"),
        }
    }
}

/// Parses certificate entries, each `(where it is, "name,name,...")`, each through
/// `Names::parse`, checking that no name is in two certificates. `source` prefixes those errors.
/// Errors come in the order of the entries.
fn parse_certificates<'a>(
    entries: impl IntoIterator<Item = (Place<'a>, &'a str)>,
    source: &str,
) -> Result<Vec<CertSpec>, Vec<String>> {
    // (the entry's position, the error): a name listed twice is found once every entry is
    // parsed, and its error sorted into place.
    let mut errors: Vec<(usize, String)> = Vec::new();
    let mut specs = Vec::new();
    // The entry's position of each spec, and how many names they list.
    let (mut positions, mut name_count) = (Vec::new(), 0);
    for (k, (place, entry)) in entries.into_iter().enumerate() {
        let (raw, options) = super::options::split_entry(entry);
        if raw.is_empty() && options.is_empty() {
            continue;
        }
        let mut failed = |e: Vec<String>| {
            errors.extend(e.into_iter().map(|e| (k, format!("{place}: {e}"))));
        };
        let options = match super::options::parse_options(&options) {
            Ok(o) => o,
            Err(e) => {
                failed(e);
                continue;
            }
        };
        let names = match Names::parse_allowing_wildcards(&raw) {
            Ok(names) => names,
            Err(e) => {
                failed(e);
                continue;
            }
        };
        let spec = CertSpec::new(names)
            .with_profile(options.profile)
            .with_challenge(options.challenge.unwrap_or_default());
        let wildcards = spec.wildcard_errors();
        if !wildcards.is_empty() {
            failed(wildcards);
            continue;
        }
        name_count += spec.names().len();
        specs.push(spec);
        positions.push(k);
    }
    // name -> id of the certificate that lists it first
    let mut seen: FxHashMap<&str, &CertId> =
        FxHashMap::with_capacity_and_hasher(name_count, Default::default());
    for (spec, &k) in specs.iter().zip(&positions) {
        for name in spec.names().iter() {
            match seen.entry(name.as_str()) {
                Entry::Occupied(first) => errors.push((
                    k,
                    format!(
                        "{source}: {name:?} is listed twice (also in certificate {:?})",
                        first.get()
                    ),
                )),
                Entry::Vacant(v) => {
                    v.insert(spec.id());
                }
            }
        }
    }
    drop(seen);
    if errors.is_empty() {
        Ok(specs)
    } else {
        // Stable: an entry's own errors stay in their order.
        errors.sort_by_key(|(k, _)| *k);
        Err(errors.into_iter().map(|(_, e)| e).collect())
    }
}

#[cfg(test)]
mod tests;
