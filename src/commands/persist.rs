//! `dns-persist-record ID [--until WHEN] [--json]`: the standing dns-persist-01 TXT record(s)
//! of a certificate for the configured CA (issuer-domain-name: DNS_PERSIST_ISSUER or the
//! directory's `meta.caaIdentities`) and the stored account (registered first if there is
//! none; asked of the running daemon, which holds the store).

use std::sync::Arc;

use super::{ask_daemon, reach, Exit, Reached};
use crate::admin::client::{Ask, Client, Outcome};
use crate::clock::unix_now;
use crate::config::{CertId, Config, WantedSet};

pub async fn dns_persist_record(
    config: Config,
    wanted: WantedSet,
    id: &str,
    until: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let id = CertId::parse(id).map_err(|e| Exit(2, format!("not a certificate id: {e}")))?;
    let id = id.as_str();
    let now = unix_now();
    let until = until
        .map(|u| crate::config::dns_persist::parse_until(u, now))
        .transpose()
        .map_err(|e| Exit(2, e))?;
    let config = Arc::new(config);
    let client = Client::new(&config.data_dir);
    // The certificate: as configured (DOMAINS, DOMAINS_FILE), else as the store knows it (a
    // `domains add`).
    let configured = wanted
        .read(&[])
        .unwrap_or_default()
        .into_iter()
        .find(|s| s.id().as_str() == id)
        .map(|s| (s.names().to_vec(), s.challenge()));
    // The certificate is found before the account is asked for: a typo registers nothing.
    let reached = reach(&client, &Ask::State(Some(id.to_string())), &config.data_dir).await?;
    let stored = match (&configured, &reached) {
        (Some(_), _) => None,
        (None, Reached::Daemon(a)) if a.outcome == Outcome::Done => {
            serde_json::from_str::<serde_json::Value>(&a.body)
                .ok()
                .and_then(|d| {
                    let c = &d["certificates"][0];
                    let names = c["names"].as_array()?;
                    let names = names.iter().filter_map(|n| n.as_str().map(String::from));
                    let challenge = c["challenge"].as_str().unwrap_or("http-01");
                    Some((
                        names.collect(),
                        haproxy_acme_state::ChallengeType::parse(challenge)?,
                    ))
                })
        }
        (None, Reached::Daemon(_)) => None,
        (None, Reached::Store(store)) => {
            store.get(id).await?.map(|r| (r.names.clone(), r.challenge))
        }
    };
    let (names, challenge) = configured
        .or(stored)
        .ok_or_else(|| Exit(3, format!("no certificate {id:?} is configured or stored")))?;
    let account = match reached {
        Reached::Daemon(_) => match ask_daemon(&client, &Ask::Account).await? {
            Some(a) if a.outcome == Outcome::Done => a.body.trim().to_string(),
            Some(a) => anyhow::bail!("the daemon could not give the account: {}", a.body.trim()),
            None => anyhow::bail!("the daemon stopped answering"),
        },
        Reached::Store(store) => crate::acme::LazyAcme::new(config.clone(), store)
            .account_url()
            .await
            .map_err(|e| {
                anyhow::anyhow!("the ACME account could not be loaded or registered: {e}")
            })?,
    };
    if challenge != haproxy_acme_state::ChallengeType::DnsPersist01 {
        eprintln!(
            "note: certificate {id} has challenge={}; add challenge=dns-persist-01 to its entry for \
             these records to be used",
            challenge.as_str()
        );
    }
    let issuers = crate::dns_persist::issuers(&config)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    let issuer = &issuers[0];
    let records: Vec<(String, String)> = crate::dns_persist::wanted(&names)
        .iter()
        .map(|w| {
            (
                w.name(),
                crate::dns_persist::value(issuer, &account, w.wildcard, until),
            )
        })
        .collect();
    if json {
        let out: Vec<serde_json::Value> = records
            .iter()
            .map(|(name, value)| {
                serde_json::json!({
                    "name": name,
                    "type": "TXT",
                    "value": value,
                    "zone_line": crate::dns_persist::zone_line(name, value),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for (name, value) in &records {
            println!("{}", crate::dns_persist::zone_line(name, value));
        }
    }
    Ok(())
}
