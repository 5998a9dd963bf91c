//! The wait before the CA is told (RFC 2136 publishing, and DNS_HOOK's records): the zone's
//! authoritative servers (its NS records, resolved) and the poll until each answers every value.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{Name, RData, RecordType};

use super::{query, query_rd, server, UpdateError};
use crate::config::dns_update::DnsUpdate;

/// The servers that must answer the value: the zone's NS records, as the update server knows
/// them, each resolved (the update server's A/AAAA answer for the name first, then the
/// system's resolver) on `port` (DNS_AUTHORITATIVE_PORT, 53 by default).
pub async fn authoritative_servers(
    cfg: &DnsUpdate,
    zone: &Name,
) -> Result<Vec<(Name, SocketAddr)>, UpdateError> {
    let server = server(cfg).await?;
    let label = format!("DNS_UPDATE_SERVER {}", cfg.server);
    servers_of_zone(server, &label, zone, cfg.authoritative_port, false).await
}

/// The NS records of `zone` as `server` (named `label` in messages) answers them, each
/// resolved (`server`'s A/AAAA answer first, then the system's resolver) on `port`.
/// `recurse`: `server` is a resolver, not the zone's primary.
pub async fn servers_of_zone(
    server: SocketAddr,
    label: &str,
    zone: &Name,
    port: u16,
    recurse: bool,
) -> Result<Vec<(Name, SocketAddr)>, UpdateError> {
    let resp = query_rd(server, zone, RecordType::NS, recurse)
        .await
        .map_err(|e| {
            UpdateError::retryable(format!(
                "{label} did not answer the NS query for zone {zone}: {e}"
            ))
        })?;
    let names: Vec<Name> = resp
        .answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::NS(ns) => Some(ns.0.clone()),
            _ => None,
        })
        .collect();
    if names.is_empty() {
        return Err(UpdateError::retryable(format!(
            "zone {zone} has no NS records at {label}: cannot tell which servers must answer"
        )));
    }
    let mut out = Vec::new();
    for ns in names {
        let mut addrs = Vec::new();
        for rtype in [RecordType::A, RecordType::AAAA] {
            if let Ok(resp) = query_rd(server, &ns, rtype, recurse).await {
                addrs.extend(resp.answers().iter().filter_map(|r| match r.data() {
                    RData::A(a) if r.name() == &ns => Some(SocketAddr::new(a.0.into(), port)),
                    RData::AAAA(a) if r.name() == &ns => Some(SocketAddr::new(a.0.into(), port)),
                    _ => None,
                }));
            }
        }
        if addrs.is_empty() {
            let host = format!("{}:{port}", ns.to_ascii().trim_end_matches('.'));
            let found = tokio::net::lookup_host(host).await;
            match found {
                Ok(found) => addrs.extend(found),
                Err(e) => {
                    return Err(UpdateError::retryable(format!(
                        "the authoritative server {ns} of zone {zone} cannot be resolved: {e}"
                    )))
                }
            }
        }
        out.extend(addrs.into_iter().map(|a| (ns.clone(), a)));
    }
    Ok(out)
}

/// The TXT values `server` answers for `name` (non-recursive; one value per record, its
/// strings joined).
pub async fn txt_values(server: SocketAddr, name: &Name) -> Result<Vec<String>, String> {
    let resp = query(server, name, RecordType::TXT).await?;
    match resp.response_code() {
        ResponseCode::NoError | ResponseCode::NXDomain => {}
        c => return Err(format!("answered {c}")),
    }
    Ok(resp
        .answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::TXT(t) if r.name() == name => Some(
                t.txt_data()
                    .iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect(),
            ),
            _ => None,
        })
        .collect())
}

/// Waits until every server in `servers` answers each (name, value) of `records`, polling
/// once a second until `deadline` (`timeout`: the setting, for the message); the error names
/// the first server that does not.
pub async fn wait_propagated(
    servers: &[(Name, SocketAddr)],
    records: &[(Name, String)],
    deadline: Instant,
    timeout: Duration,
) -> Result<(), UpdateError> {
    for (ns, addr) in servers {
        for (name, value) in records {
            loop {
                let last = match txt_values(*addr, name).await {
                    Ok(values) if values.iter().any(|v| v == value) => break,
                    Ok(values) => format!("it answers {} TXT value(s), not ours", values.len()),
                    Err(e) => e,
                };
                if Instant::now() >= deadline {
                    return Err(UpdateError::retryable(format!(
                        "the authoritative server {ns} ({addr}) does not answer the TXT record \
                         {name} after {}s (DNS_PROPAGATION_TIMEOUT; the CA was not asked to \
                         validate): {last}",
                        timeout.as_secs()
                    )));
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    Ok(())
}

/// DNS_HOOK's records: for each (`domain`, value), `_acme-challenge.<domain>` with its CNAMEs
/// followed and its zone found at `resolver` (named `label`; recursion desired), then the wait
/// until every authoritative server of that zone (asked on `port`) answers the value.
pub async fn wait_published_elsewhere(
    resolver: SocketAddr,
    label: &str,
    port: u16,
    records: &[(String, String)],
    timeout: Duration,
) -> Result<(), UpdateError> {
    let deadline = Instant::now() + timeout;
    for (domain, value) in records {
        let mut name = super::acme_name(domain)?;
        for _ in 0..super::MAX_CNAMES {
            let resp = query_rd(resolver, &name, RecordType::CNAME, true)
                .await
                .map_err(|e| {
                    UpdateError::retryable(format!(
                        "{label} did not answer the CNAME query for {name}: {e}"
                    ))
                })?;
            match resp.answers().iter().find_map(|r| match r.data() {
                RData::CNAME(c) if r.name() == &name => Some(c.0.clone()),
                _ => None,
            }) {
                Some(next) => name = next,
                None => break,
            }
        }
        let zone = match super::zone_of(resolver, &name, true).await {
            Ok(Some(z)) => z,
            Ok(None) => {
                return Err(UpdateError::retryable(format!(
                    "{label} knows no zone holding {name}: is the name delegated (or DNS_RESOLVER \
                     a resolver that sees it)?"
                )))
            }
            Err((q, e)) => {
                return Err(UpdateError::retryable(format!(
                    "{label} did not answer the {q} query: {e}"
                )))
            }
        };
        let servers = servers_of_zone(resolver, label, &zone, port, true).await?;
        wait_propagated(&servers, &[(name, value.clone())], deadline, timeout).await?;
    }
    Ok(())
}
