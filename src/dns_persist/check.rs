//! The read-only check before the CA is told to validate: each record a certificate needs is
//! looked up at every authoritative server of its zone (the zone found by SOA queries at the
//! resolver, its NS servers resolved, as for RFC 2136: `dns_update`), and must authorize our
//! account there. Nothing is published: a missing or wrong record is a retryable failure whose
//! message shows the exact record to create.

use std::net::SocketAddr;

use hickory_proto::rr::Name;

use super::{authorizes, value, zone_line, Wanted};
use crate::config::Config;

/// A record found authorizing us, with its persistUntil.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub name: String,
    pub until: Option<i64>,
}

/// The issuer-domain-names the CA answers to: DNS_PERSIST_ISSUER, else the directory's
/// `meta.caaIdentities` (the first is the one printed).
pub async fn issuers(config: &Config) -> Result<Vec<String>, String> {
    if let Some(i) = &config.dns_persist.issuer {
        return Ok(vec![i.clone()]);
    }
    let ids = crate::acme::directory::caa_identities(config)
        .await
        .map_err(|e| {
            format!(
                "the CA's directory {} could not be read for its caaIdentities (the \
                 issuer-domain-name): {e}",
                config.acme_directory
            )
        })?;
    if ids.is_empty() {
        return Err(format!(
            "the CA's directory {} lists no caaIdentities: set DNS_PERSIST_ISSUER to the \
             issuer-domain-name the CA documents for dns-persist-01",
            config.acme_directory
        ));
    }
    Ok(ids)
}

/// The resolver asked for zones and NS servers: DNS_RESOLVER, else DNS_UPDATE_SERVER, else the
/// first `nameserver` of /etc/resolv.conf (port 53).
pub async fn resolver(config: &Config) -> Result<(SocketAddr, String), String> {
    let given = config
        .dns_persist
        .resolver
        .clone()
        .map(|r| (r, "DNS_RESOLVER"))
        .or_else(|| {
            config
                .dns_update
                .as_ref()
                .map(|u| (u.server.clone(), "DNS_UPDATE_SERVER"))
        });
    let (host, setting) = match given {
        Some(g) => g,
        None => {
            let conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
            let ns = conf
                .lines()
                .find_map(|l| l.trim().strip_prefix("nameserver"))
                .map(str::trim)
                .ok_or("no DNS_RESOLVER and no nameserver in /etc/resolv.conf")?;
            (ns.to_string(), "/etc/resolv.conf")
        }
    };
    let with_port = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, 53).to_string(),
        Err(_)
            if host
                .rsplit_once(':')
                .is_some_and(|(_, p)| p.parse::<u16>().is_ok()) =>
        {
            host.clone()
        }
        Err(_) => format!("{host}:53"),
    };
    let addr = tokio::net::lookup_host(&with_port)
        .await
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| format!("{setting} {host} cannot be resolved"))?;
    Ok((addr, format!("{setting} {host}")))
}

/// Checks that every authoritative server of each record's zone answers a value authorizing
/// `account` for it (with `policy=wildcard` where needed, persistUntil not passed). The error
/// names what was found and ends with the zone-file lines to create.
pub async fn check(
    config: &Config,
    issuers: &[String],
    account: &str,
    wanted: &[Wanted],
    now: i64,
) -> Result<Vec<Found>, String> {
    let (server, label) = resolver(config).await?;
    let port = config.dns_persist.authoritative_port;
    let mut found = Vec::new();
    let mut problems = Vec::new();
    for w in wanted {
        let name = w.name();
        let mut fqdn =
            Name::from_ascii(&name).map_err(|e| format!("{name:?} is not a DNS name: {e}"))?;
        fqdn.set_fqdn(true);
        let zone = match crate::dns_update::zone_of(server, &fqdn, true).await {
            Ok(Some(z)) => z,
            Ok(None) => {
                problems.push(format!("{label} knows no zone holding {name}"));
                continue;
            }
            Err((q, e)) => {
                problems.push(format!("{label} did not answer the {q} query: {e}"));
                continue;
            }
        };
        let servers =
            match crate::dns_update::servers_of_zone(server, &label, &zone, port, true).await {
                Ok(s) => s,
                Err(e) => {
                    problems.push(e.message);
                    continue;
                }
            };
        // The record's persistUntil as the least lasting server has it (`i64::MAX`: none),
        // each server's best value counted.
        let mut until: Option<i64> = None;
        for (ns, addr) in &servers {
            match crate::dns_update::txt_values(*addr, &fqdn).await {
                Err(e) => problems.push(format!(
                    "the authoritative server {ns} ({addr}) of zone {zone} did not answer the TXT \
                     query for {name}: {e}"
                )),
                Ok(values) => {
                    let judged: Vec<_> = values
                        .iter()
                        .map(|v| authorizes(v, issuers, account, w, now))
                        .collect();
                    let best = judged
                        .iter()
                        .filter_map(|j| j.clone().ok())
                        .map(|t| t.unwrap_or(i64::MAX))
                        .max();
                    if let Some(t) = best {
                        until = Some(until.map_or(t, |u| u.min(t)));
                        continue;
                    }
                    let why: Vec<String> = judged
                        .into_iter()
                        .filter_map(|j| j.err().flatten())
                        .collect();
                    problems.push(format!(
                        "the authoritative server {ns} ({addr}) of zone {zone} answers {} TXT \
                         value(s) at {name}, none authorizing this account{}",
                        values.len(),
                        if why.is_empty() {
                            format!(" for {}", issuers.join(" or "))
                        } else {
                            format!(": {}", why.join("; "))
                        }
                    ));
                }
            }
        }
        if let Some(t) = until.filter(|_| problems.is_empty()) {
            let until = (t != i64::MAX).then_some(t);
            found.push(Found { name, until });
        }
    }
    if problems.is_empty() {
        return Ok(found);
    }
    let issuer = issuers.first().map(String::as_str).unwrap_or_default();
    let lines: Vec<String> = wanted
        .iter()
        .map(|w| zone_line(&w.name(), &value(issuer, account, w.wildcard, None)))
        .collect();
    Err(format!(
        "dns-persist-01: {} (the CA was not asked to validate); create the record(s) \
         (`haproxy-acme dns-persist-record ID` prints them, with --until for persistUntil):\n{}",
        problems.join("; "),
        lines.join("\n")
    ))
}
