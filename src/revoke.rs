//! `revoke ID [--reason R]` (RFC 8555 §7.6): the CA revokes the stored certificate of ID, the
//! revocation is recorded (`Event::Revoked`) and a new certificate is ordered at once with a new
//! key. On the daemon (admin socket, which then wakes the reconciler) or, with no daemon, on the
//! store (the new certificate is then ordered when the daemon starts). The CLI's wait for the
//! new certificate is `commands::revoke`.

use haproxy_acme_state::{Event, RevocationReason, UnixTime};

use crate::acme::LazyAcme;
use crate::ops::{get, parse_id, update, Done, OpError};
use crate::store::Store;

/// Revokes the current certificate of `id` at the CA with `reason`, then records it so the
/// next certificate is ordered at once. A CA refusal is `Refused` with the CA's words; a CA
/// that cannot be reached is `Unavailable`. Nothing is recorded unless the CA revoked.
pub async fn revoke(
    store: &dyn Store,
    acme: &LazyAcme,
    id: &str,
    reason: RevocationReason,
    now: UnixTime,
) -> Result<Done, OpError> {
    let id = parse_id(id)?;
    let id = id.as_str();
    let r = get(store, id).await?;
    let Some(meta) = r.cert.clone() else {
        return Err(OpError::Refused(format!(
            "{id}: no certificate is stored yet; nothing to revoke"
        )));
    };
    let serial = meta.serial;
    let Some((chain, _key)) = store.certificate(id).await? else {
        return Err(OpError::Refused(format!(
            "{id}: the chain of certificate serial {serial} is missing from the store; it \
             cannot be sent to the CA"
        )));
    };
    if let Err(e) = acme.revoke(&chain, reason).await {
        let message = format!("{id}: the CA did not revoke serial {serial}: {e}");
        tracing::warn!(id, serial = %serial, reason = reason.as_str(), error = %e, "revocation failed");
        return Err(if e.unreachable {
            OpError::Unavailable(message)
        } else {
            OpError::Refused(message)
        });
    }
    tracing::warn!(id, serial = %serial, reason = reason.as_str(), "certificate revoked at the operator's request; ordering a new one with a new key");
    let event = Event::Revoked {
        serial: serial.clone(),
        reason,
    };
    if let Err(e) = update(store, id, event, now).await {
        return Err(match e {
            OpError::Store(e) => OpError::Unavailable(format!(
                "{id}: serial {serial} is revoked at the CA, but the store could not record it \
                 ({e}); `haproxy-acme renew {id} --force` orders its replacement"
            )),
            other => other,
        });
    }
    Ok(Done {
        message: format!(
            "{id}: revoked serial {serial} ({}); ordering a new certificate with a new key",
            reason.as_str()
        ),
        wake: vec![id.to_string()],
        reload: false,
    })
}
