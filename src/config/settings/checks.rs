//! Checks of single setting values that `Config::from_raw` runs at start, so garbage is refused
//! with the setting named (exit 2) instead of failing later, forever, at the first use: the
//! directory URL, the CA bundle, host names, unix socket paths and what HAProxy's runtime API
//! can take in a file name.

use std::io::Read;
use std::path::Path;

/// A unix socket path holds at most this many bytes (`sun_path` is 108 with its NUL).
pub(super) const MAX_UNIX_SOCKET_PATH: usize = 107;
/// A CA bundle larger than this is not one (the system bundle of a Debian host is ~220 KB).
const MAX_CA_BUNDLE: u64 = 4 << 20;

/// `ACME_DIRECTORY`: an `https://` URL with a host (and a port, if one is given), and nothing a
/// request line cannot carry.
pub(super) fn directory_url(d: &str) -> Result<(), String> {
    let Some(rest) = d.strip_prefix("https://") else {
        return Err("must be an https:// URL".into());
    };
    if let Some(c) = d
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || !c.is_ascii())
    {
        return Err(format!(
            "contains {c:?}: a URL has no spaces, control or non-ASCII characters"
        ));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    host_port(authority).map_err(|why| format!("{why} (expected https://host[:port]/path)"))
}

/// `host` or `host:port` (an IPv6 address in brackets), the port from 1 to 65535.
pub(super) fn host_port(s: &str) -> Result<(), String> {
    let (host, port) = match s.strip_prefix('[') {
        Some(v6) => {
            let (addr, after) = v6
                .split_once(']')
                .ok_or("an IPv6 address in brackets needs its ']'")?;
            addr.parse::<std::net::Ipv6Addr>()
                .map_err(|_| format!("[{addr}] is not an IPv6 address"))?;
            (None, after.strip_prefix(':'))
        }
        None => match s.rsplit_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(s), None),
        },
    };
    if let Some(host) = host {
        self::host(host)?;
    }
    match port {
        Some(p) if !matches!(p.parse::<u16>(), Ok(1..)) => {
            Err(format!("{p:?} is not a port (1 to 65535)"))
        }
        _ => Ok(()),
    }
}

/// A host name or IPv4 address as a resolver takes it: letters, digits, `-`, `_` and `.`.
pub(super) fn host(h: &str) -> Result<(), String> {
    if h.is_empty() {
        return Err("the host is empty".into());
    }
    if h.len() > 253 {
        return Err(format!(
            "the host is {} characters long (253 at most)",
            h.len()
        ));
    }
    match h
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        Some(c) => Err(format!("the host {h:?} contains {c:?}")),
        None => Ok(()),
    }
}

/// `ACME_CA_BUNDLE`: a readable PEM file holding at least one X.509 certificate.
pub(super) fn ca_bundle(p: &Path) -> Result<(), String> {
    if !p.is_file() {
        return Err("no such file".into());
    }
    let mut text = String::new();
    std::fs::File::open(p)
        .and_then(|f| f.take(MAX_CA_BUNDLE + 1).read_to_string(&mut text))
        .map_err(|e| format!("cannot be read: {e}"))?;
    if text.len() as u64 > MAX_CA_BUNDLE {
        return Err("is larger than 4 MiB: not a CA bundle".into());
    }
    match crate::pki::ca_bundle_certificates(&text) {
        Ok(0) => Err(
            "holds no certificate: expected the CA's root as PEM (-----BEGIN CERTIFICATE-----)"
                .into(),
        ),
        Ok(_) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// The first character HAProxy's runtime API cannot take inside a file name: it splits a
/// command on spaces, `;` separates commands, `\` escapes, and a line ends a command.
pub(super) fn runtime_api_unsafe(s: &str) -> Option<char> {
    s.chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, ';' | '\\'))
}

/// A unix socket path that fits `sun_path`.
pub(super) fn unix_socket_path(p: &Path) -> Result<(), String> {
    let len = p.as_os_str().len();
    if len > MAX_UNIX_SOCKET_PATH {
        return Err(format!(
            "{} is {len} bytes long; a unix socket path holds at most {MAX_UNIX_SOCKET_PATH}",
            p.display()
        ));
    }
    Ok(())
}
