//! DNS-01 by RFC 2136 dynamic update with TSIG (`DNS_UPDATE_SERVER`): finds where the TXT
//! record of `_acme-challenge.<domain>` goes (a CNAME there is followed, the acme-dns
//! delegation pattern; the zone is found by SOA queries at the update server, walking up the
//! labels), adds it (TTL 60) or deletes exactly that record (name, type and value), signed
//! with the TSIG key, and waits until every authoritative server of the zone (its NS records)
//! answers the value. Messages are hickory-proto's (encoding, TSIG signing and verification);
//! this module only carries them over TCP.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hickory_proto::dnssec::rdata::tsig::{TsigAlgorithm, TSIG};
use hickory_proto::dnssec::rdata::DNSSECRData;
use hickory_proto::dnssec::tsig::TSigner;
use hickory_proto::op::{update_message, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::{Name, RData, Record, RecordSet, RecordType};
use hickory_proto::serialize::binary::BinEncodable;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::dns_update::{DnsUpdate, TsigAlg};

mod propagation;

pub use propagation::{
    authoritative_servers, servers_of_zone, txt_values, wait_propagated, wait_published_elsewhere,
};

/// The TTL of the TXT records we add.
pub const TTL: u32 = 60;
/// How long one exchange with a server may take.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// How many CNAMEs are followed from `_acme-challenge.<domain>`.
const MAX_CNAMES: usize = 8;

/// A failure, with whether retrying can help before the configuration changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateError {
    pub message: String,
    pub permanent: bool,
}

impl UpdateError {
    fn retryable(message: String) -> Self {
        UpdateError {
            message,
            permanent: false,
        }
    }
    fn permanent(message: String) -> Self {
        UpdateError {
            message,
            permanent: true,
        }
    }
}

impl std::fmt::Display for UpdateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Where a domain's TXT record goes: `name` (after CNAMEs) in `zone`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub name: Name,
    pub zone: Name,
}

/// The update server's address (DNS_UPDATE_SERVER resolved).
async fn server(cfg: &DnsUpdate) -> Result<SocketAddr, UpdateError> {
    resolve(&cfg.server).await.map_err(|e| {
        UpdateError::retryable(format!(
            "DNS_UPDATE_SERVER {}: cannot be resolved: {e}",
            cfg.server
        ))
    })
}

async fn resolve(host_port: &str) -> std::io::Result<SocketAddr> {
    tokio::net::lookup_host(host_port)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other("no address"))
}

fn signer(cfg: &DnsUpdate) -> Result<TSigner, UpdateError> {
    let algorithm = match cfg.algorithm {
        TsigAlg::HmacSha256 => TsigAlgorithm::HmacSha256,
        TsigAlg::HmacSha512 => TsigAlgorithm::HmacSha512,
    };
    let name = Name::from_ascii(&cfg.key_name).map_err(|e| {
        UpdateError::permanent(format!("DNS_TSIG_KEY_NAME {:?}: {e}", cfg.key_name))
    })?;
    // The error of `new` names the algorithm only (never the key).
    TSigner::new(cfg.secret.bytes().to_vec(), algorithm, name, 300)
        .map_err(|e| UpdateError::permanent(format!("DNS_TSIG_ALGORITHM: {e}")))
}

/// Sends `msg` over TCP (RFC 7766 framing) and returns the response bytes.
async fn exchange_bytes(server: SocketAddr, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let io = async {
        let mut s = TcpStream::connect(server).await?;
        let len = u16::try_from(bytes.len()).map_err(std::io::Error::other)?;
        let mut framed = len.to_be_bytes().to_vec();
        framed.extend_from_slice(bytes);
        s.write_all(&framed).await?;
        let mut len = [0u8; 2];
        s.read_exact(&mut len).await?;
        let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut buf).await?;
        Ok(buf)
    };
    tokio::time::timeout(EXCHANGE_TIMEOUT, io)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in 10 s"))?
}

/// A non-recursive query for `name`/`rtype` at `server`.
async fn query(server: SocketAddr, name: &Name, rtype: RecordType) -> Result<Message, String> {
    query_rd(server, name, rtype, false).await
}

/// A query for `name`/`rtype` at `server`, asking it to recurse when `recurse` (a resolver
/// rather than an authoritative server: the dns-persist-01 check's DNS_RESOLVER).
pub(crate) async fn query_rd(
    server: SocketAddr,
    name: &Name,
    rtype: RecordType,
    recurse: bool,
) -> Result<Message, String> {
    let mut msg = Message::new();
    msg.set_id(rand::random())
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(recurse)
        .add_query(Query::query(name.clone(), rtype));
    let bytes = msg.to_vec().map_err(|e| e.to_string())?;
    let resp = exchange_bytes(server, &bytes)
        .await
        .map_err(|e| e.to_string())?;
    let resp = Message::from_vec(&resp).map_err(|e| format!("unreadable answer: {e}"))?;
    if resp.id() != msg.id() {
        return Err("an answer to another query".into());
    }
    Ok(resp)
}

fn acme_name(domain: &str) -> Result<Name, UpdateError> {
    let mut n = Name::from_ascii(format!("_acme-challenge.{domain}")).map_err(|e| {
        UpdateError::permanent(format!("{domain:?} is not a DNS name for an update: {e}"))
    })?;
    n.set_fqdn(true);
    Ok(n)
}

/// Where the TXT record for `domain` (no `*.`) goes: CNAMEs at `_acme-challenge.<domain>`
/// followed, then the zone found by SOA queries at the update server, label by label up.
pub async fn target(cfg: &DnsUpdate, domain: &str) -> Result<Target, UpdateError> {
    let server = server(cfg).await?;
    let unreachable = |what: &str, e: String| {
        UpdateError::retryable(format!(
            "DNS_UPDATE_SERVER {} ({server}) did not answer the {what} query: {e}",
            cfg.server
        ))
    };
    let mut name = acme_name(domain)?;
    for _ in 0..MAX_CNAMES {
        let resp = query(server, &name, RecordType::CNAME)
            .await
            .map_err(|e| unreachable(&format!("CNAME {name}"), e))?;
        let next = resp.answers().iter().find_map(|r| match r.data() {
            RData::CNAME(c) if r.name() == &name => Some(c.0.clone()),
            _ => None,
        });
        match next {
            Some(n) => {
                tracing::debug!(from = %name, to = %n, "following the CNAME of the challenge record");
                name = n;
            }
            None => break,
        }
    }
    match zone_of(server, &name, false)
        .await
        .map_err(|(q, e)| unreachable(&q, e))?
    {
        Some(zone) => Ok(Target { name, zone }),
        None => Err(UpdateError::permanent(format!(
            "DNS_UPDATE_SERVER {} is authoritative for no zone holding {name}: it must be the \
             primary server of that name's zone",
            cfg.server
        ))),
    }
}

/// The zone holding `name`: SOA queries at `server`, label by label up (`None`: no zone
/// found). The error names the query that was not answered.
pub(crate) async fn zone_of(
    server: SocketAddr,
    name: &Name,
    recurse: bool,
) -> Result<Option<Name>, (String, String)> {
    let mut candidate = name.clone();
    loop {
        let resp = query_rd(server, &candidate, RecordType::SOA, recurse)
            .await
            .map_err(|e| (format!("SOA {candidate}"), e))?;
        let is_zone = resp.response_code() == ResponseCode::NoError
            && resp
                .answers()
                .iter()
                .any(|r| r.record_type() == RecordType::SOA && r.name() == &candidate);
        if is_zone {
            return Ok(Some(candidate));
        }
        if candidate.num_labels() <= 1 {
            return Ok(None);
        }
        candidate = candidate.base_name();
    }
}

fn txt_record(target: &Target, value: &str) -> RecordSet {
    let record = Record::from_rdata(
        target.name.clone(),
        TTL,
        RData::TXT(TXT::new(vec![value.to_string()])),
    );
    RecordSet::from(record)
}

/// Adds the TXT record `value` at `target` (other values there stay).
pub async fn add(cfg: &DnsUpdate, target: &Target, value: &str) -> Result<(), UpdateError> {
    let msg = update_message::append(txt_record(target, value), target.zone.clone(), false, false);
    send_update(cfg, target, msg, "add").await
}

/// Deletes exactly the TXT record `value` at `target` (name, type and value); deleting one
/// that is not there succeeds.
pub async fn delete(cfg: &DnsUpdate, target: &Target, value: &str) -> Result<(), UpdateError> {
    let msg =
        update_message::delete_by_rdata(txt_record(target, value), target.zone.clone(), false);
    send_update(cfg, target, msg, "delete").await
}

async fn send_update(
    cfg: &DnsUpdate,
    target: &Target,
    mut msg: Message,
    what: &str,
) -> Result<(), UpdateError> {
    let server = server(cfg).await?;
    let signer = signer(cfg)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as u32;
    let verifier = msg
        .finalize(&signer, now)
        .map_err(|e| UpdateError::permanent(format!("cannot sign the update: {e}")))?;
    let bytes = msg
        .to_vec()
        .map_err(|e| UpdateError::permanent(format!("cannot encode the update: {e}")))?;
    let at = if cfg.server == server.to_string() {
        cfg.server.clone()
    } else {
        format!("{} ({server})", cfg.server)
    };
    let context = format!(
        "the update ({what} TXT {} in zone {}) at DNS_UPDATE_SERVER {at} with TSIG key {}",
        target.name, target.zone, cfg.key_name
    );
    let resp_bytes = exchange_bytes(server, &bytes)
        .await
        .map_err(|e| UpdateError::retryable(format!("{context} failed: {e}")))?;
    let resp = Message::from_vec(&resp_bytes)
        .map_err(|e| UpdateError::retryable(format!("{context}: unreadable answer: {e}")))?;
    let code = resp.response_code();
    if code != ResponseCode::NoError {
        let tsig = tsig_error(&resp);
        return Err(refusal(&context, code, tsig, &cfg.key_name));
    }
    // The answer must be signed with our key too (RFC 8945 §5.3).
    if let Some(mut verify) = verifier {
        verify(&resp_bytes).map_err(|e| {
            UpdateError::permanent(format!(
                "{context}: the answer's TSIG signature does not verify ({e}): is \
                 DNS_UPDATE_SERVER the server that holds this key?"
            ))
        })?;
    }
    tracing::info!(record = %target.name, zone = %target.zone, server = %cfg.server, "DNS update: {what} TXT");
    Ok(())
}

/// The TSIG error code of a response's TSIG record (RFC 8945 §4.3: BADSIG 16, BADKEY 17,
/// BADTIME 18), if it has one. hickory-proto keeps the field private: it is read from the
/// record's own encoding (algorithm name, time, fudge, MAC size, MAC, original id, error).
fn tsig_error(resp: &Message) -> Option<u16> {
    let tsig: &TSIG = resp.signature().iter().find_map(|r| match r.data() {
        RData::DNSSEC(DNSSECRData::TSIG(t)) => Some(t),
        _ => None,
    })?;
    let bytes = tsig.to_bytes().ok()?;
    let alg_len = tsig.algorithm().to_name().to_bytes().ok()?.len();
    let at = alg_len + 6 + 2 + 2 + tsig.mac().len() + 2;
    Some(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]))
}

/// The RCODE's mnemonic (RFC 1035, 2136), as BIND's logs and `dig` print it.
fn rcode(code: ResponseCode) -> String {
    match code {
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::NXDomain => "NXDOMAIN".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        ResponseCode::Refused => "REFUSED".into(),
        ResponseCode::YXDomain => "YXDOMAIN".into(),
        ResponseCode::YXRRSet => "YXRRSET".into(),
        ResponseCode::NXRRSet => "NXRRSET".into(),
        ResponseCode::NotAuth => "NOTAUTH".into(),
        ResponseCode::NotZone => "NOTZONE".into(),
        c => format!("RCODE {} ({c})", u16::from(c)),
    }
}

/// The error for an update the server did not apply.
fn refusal(context: &str, code: ResponseCode, tsig: Option<u16>, key: &str) -> UpdateError {
    let code_name = rcode(code);
    let why = match (code, tsig) {
        (_, Some(16)) => format!(
            "BADSIG: the server knows key {key} but the signature does not match: \
             DNS_TSIG_SECRET (or DNS_TSIG_SECRET_FILE) or DNS_TSIG_ALGORITHM differs from the \
             server's key"
        ),
        (_, Some(17)) => format!(
            "BADKEY: the server has no key named {key} (with this algorithm): check \
             DNS_TSIG_KEY_NAME and DNS_TSIG_ALGORITHM against the server's configuration"
        ),
        (_, Some(18)) => {
            return UpdateError::retryable(format!(
            "{context} was refused: {code_name} (BADTIME: this machine's clock and the server's \
                 differ by more than 5 minutes)"
        ))
        }
        (ResponseCode::NotAuth, _) => "the server is not authoritative for the zone, or \
                                       rejected the key: check DNS_UPDATE_SERVER is the zone's \
                                       primary"
            .to_string(),
        (ResponseCode::Refused, _) => format!(
            "the server's policy does not let key {key} update this name (BIND: allow-update \
             or update-policy of the zone)"
        ),
        (ResponseCode::NotZone, _) => "the name is not in the zone".to_string(),
        (c, _) => {
            return UpdateError::retryable(format!(
                "{context} failed: the server answered {}",
                rcode(c)
            ))
        }
    };
    UpdateError::permanent(format!("{context} was refused: {code_name}: {why}"))
}

/// Publishes each (domain, value): adds every record at its target (CNAMEs followed), then
/// waits until every authoritative server of each zone answers every value, within
/// DNS_PROPAGATION_TIMEOUT in all.
pub async fn publish(cfg: &DnsUpdate, records: &[(&str, String)]) -> Result<(), UpdateError> {
    let mut zones: Vec<(Name, Vec<(Name, String)>)> = Vec::new();
    for (domain, value) in records {
        let target = target(cfg, domain).await?;
        add(cfg, &target, value).await?;
        match zones.iter_mut().find(|(z, _)| *z == target.zone) {
            Some((_, records)) => records.push((target.name, value.clone())),
            None => zones.push((target.zone, vec![(target.name, value.clone())])),
        }
    }
    let deadline = Instant::now() + cfg.propagation_timeout;
    for (zone, records) in &zones {
        let servers = authoritative_servers(cfg, zone).await?;
        wait_propagated(&servers, records, deadline, cfg.propagation_timeout).await?;
    }
    Ok(())
}

/// Removes the record `value` of `domain` (found again: CNAMEs followed).
pub async fn remove(cfg: &DnsUpdate, domain: &str, value: &str) -> Result<(), UpdateError> {
    let target = target(cfg, domain).await?;
    delete(cfg, &target, value).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_says_what_to_check_and_never_the_secret() {
        let ctx = "the update (add TXT x in zone y) at DNS_UPDATE_SERVER s with TSIG key k";
        let e = refusal(ctx, ResponseCode::NotAuth, Some(16), "k");
        assert!(e.permanent);
        assert!(e.message.contains("was refused: NOTAUTH: BADSIG"), "{e}");
        assert!(e.message.contains("BADSIG") && e.message.contains("DNS_TSIG_SECRET"));
        let e = refusal(ctx, ResponseCode::NotAuth, Some(17), "k");
        assert!(e.permanent && e.message.contains("no key named k"), "{e}");
        let e = refusal(ctx, ResponseCode::NotAuth, Some(18), "k");
        assert!(!e.permanent && e.message.contains("clock"), "{e}");
        let e = refusal(ctx, ResponseCode::Refused, None, "k");
        assert!(e.permanent && e.message.contains("allow-update"), "{e}");
        let e = refusal(ctx, ResponseCode::ServFail, None, "k");
        assert!(!e.permanent, "{e}");
    }

    #[test]
    fn the_tsig_error_is_read_from_the_record() {
        let mut msg = Message::new();
        for (mac, error) in [(vec![], 16u16), (vec![7u8; 32], 18)] {
            let tsig = TSIG::new(TsigAlgorithm::HmacSha256, 1, 300, mac, 9, error, vec![1, 2]);
            msg.add_tsig(Record::from_rdata(
                Name::from_ascii("k.").unwrap(),
                0,
                RData::DNSSEC(DNSSECRData::TSIG(tsig)),
            ));
            let back = Message::from_vec(&msg.to_vec().unwrap()).unwrap();
            assert_eq!(tsig_error(&back), Some(error));
            msg = Message::new();
        }
        assert_eq!(tsig_error(&Message::new()), None);
    }
}
