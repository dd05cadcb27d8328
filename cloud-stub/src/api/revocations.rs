//! `POST /revocations`: bulk revocation, what an operator does when a bootstrap token leaks.
//! Revokes a list of device ids, every device enrolled with a bootstrap token, or (with
//! `org:admin`, the Owner role and the organization id as confirmation) every device of the
//! organization. All revocations and their outbox entries are one commit; the envelopes are
//! then pushed to the broker. Re-running it is harmless: revoked devices are counted, not
//! revoked again.
//!
//! A key acts on its own environment only: devices of the other environment named by id are
//! `not_found`, a bootstrap token of the other environment is 404, and `all` means every
//! device of the key's environment (for a sandbox key, every sandbox device). A session acts
//! on both, or on the one it names in `environment`.

use axum::Json;
use axum::extract::State;
use octomil_common::DeviceId;
use octomil_common::envelope;
use octomil_common::wire::codes;
use serde::{Deserialize, Serialize};

use crate::api::metrics::Metrics;
use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Auth, Body};
use crate::mqtt::outbox;
use crate::scope::{Role, Scope};
use crate::store::{Change, DeviceState, REVOCATION_SEQ};

/// Most device ids one call may name.
pub const MAX_IDS: usize = 10_000;
/// The body limit of this route: room for [`MAX_IDS`] ids of the longest length, quoted and
/// comma-separated, plus 64 KiB for the rest, so the id cap and the body cap agree (the
/// default 64 KiB fits about 3,000 ids).
pub const MAX_BODY_BYTES: usize =
    MAX_IDS * (octomil_common::ids::MAX_DEVICE_ID_LEN + 4) + octomil_common::wire::MAX_BODY_BYTES;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkRevoke {
    /// Exactly one of `device_ids`, `bootstrap_token_id`, `all`.
    pub device_ids: Option<Vec<String>>,
    pub bootstrap_token_id: Option<String>,
    #[serde(default)]
    pub all: bool,
    /// For `all`: must repeat the organization id.
    pub confirm: Option<String>,
    pub reason: Option<String>,
    /// `live` or `test`: narrows a session's call to one environment (a key acts on its
    /// own; naming the other is 403 `wrong_environment`).
    pub environment: Option<crate::store::Environment>,
}

#[derive(Debug, Serialize)]
pub struct BulkRevoked {
    /// Devices revoked by this call.
    pub revoked: Vec<String>,
    /// Devices that were revoked already.
    pub already_revoked: usize,
    /// Ids named that the cloud does not know.
    pub not_found: Vec<String>,
    /// Envelopes the broker acknowledged; the rest stay in the outbox, which keeps retrying.
    pub published: usize,
}

pub async fn revoke(
    State(state): State<AppState>,
    auth: Auth,
    Body(req): Body<BulkRevoke, MAX_BODY_BYTES>,
) -> ApiResult<Json<BulkRevoked>> {
    // A destructive call: a session needs a second factor from the last 10 minutes.
    crate::session::require_recent_second_factor(&state, &auth)?;
    let chosen = usize::from(req.device_ids.is_some())
        + usize::from(req.bootstrap_token_id.is_some())
        + usize::from(req.all);
    if chosen != 1 {
        return Err(ApiError::bad_request(
            codes::INVALID_ARGUMENT,
            "give exactly one of device_ids, bootstrap_token_id or all",
        ));
    }
    if req.all {
        // The whole fleet at once is organisation administration, as deleting the org is.
        if !auth.scopes().contains(Scope::OrgAdmin) {
            return Err(ApiError::insufficient_scope(Scope::OrgAdmin.as_str()));
        }
        if auth.role() < Some(Role::Owner) {
            return Err(ApiError::forbidden(
                "revoking every device needs the owner role",
            ));
        }
    }
    let reason = req
        .reason
        .clone()
        .unwrap_or_else(|| "revoked by operator (bulk)".into());
    if reason.len() > envelope::MAX_REASON_LEN {
        return Err(ApiError::bad_request(
            codes::INVALID_ARGUMENT,
            format!("reason is longer than {} bytes", envelope::MAX_REASON_LEN),
        ));
    }
    let ids = match &req.device_ids {
        Some(ids) if ids.len() > MAX_IDS => {
            return Err(ApiError::bad_request(
                codes::INVALID_ARGUMENT,
                format!("at most {MAX_IDS} device ids per call"),
            ));
        }
        Some(ids) => Some(
            ids.iter()
                .map(|i| super::devices::parse_id(i))
                .collect::<ApiResult<Vec<DeviceId>>>()?,
        ),
        None => None,
    };
    let scope = super::env_scope::scope(&auth, req.environment)?;
    let now_ms = state.clock.now_ms();
    let started = std::time::Instant::now();
    let durable = state.publisher.durable();
    // Every device of the call is one step of the writer: one durable commit for all of them,
    // their audit records in the same commit, in order.
    let owned = (state.clone(), auth.clone());
    let pending = state.store.write(move |m| {
        let (state, auth) = owned;
        let mut answer = BulkRevoked {
            revoked: Vec::new(),
            already_revoked: 0,
            not_found: Vec::new(),
            published: 0,
        };
        let targets: Vec<String> = match (&ids, &req.bootstrap_token_id) {
            (Some(ids), _) => ids.iter().map(|i| i.as_str().to_owned()).collect(),
            (None, Some(bt)) => {
                if !m
                    .bootstrap
                    .get(bt)
                    .is_some_and(|b| scope.sees(b.environment))
                {
                    return Err(ApiError::not_found("bootstrap token"));
                }
                m.devices
                    .values()
                    .filter(|d| d.bootstrap_token_id.as_deref() == Some(bt.as_str()))
                    .filter(|d| scope.sees(d.environment))
                    .map(|d| d.device_id.clone())
                    .collect()
            }
            (None, None) => {
                let org = m
                    .org
                    .as_ref()
                    .ok_or_else(|| ApiError::not_found("organization"))?;
                if req.confirm.as_deref() != Some(org.id.as_str()) {
                    return Err(ApiError::bad_request(
                        codes::INVALID_ARGUMENT,
                        "confirm must be the organization id",
                    ));
                }
                m.devices
                    .values()
                    .filter(|d| scope.sees(d.environment))
                    .map(|d| d.device_id.clone())
                    .collect()
            }
        };
        // One cloud-wide sequence for the whole batch (never per device: see devices::revoke).
        let mut seq = m.counter(REVOCATION_SEQ);
        let mut revoked = Vec::new();
        for id in targets {
            // Another environment's device is not found, exactly as an unknown id.
            let Some(d) = m.devices.get(&id).filter(|d| scope.sees(d.environment)) else {
                answer.not_found.push(id);
                continue;
            };
            if d.state == DeviceState::Revoked {
                answer.already_revoked += 1;
                continue;
            }
            let mut d = d.clone();
            d.kill_credentials();
            d.state = DeviceState::Revoked;
            d.revoked_at = Some(now_ms / 1000);
            d.revoke_reason = Some(reason.clone());
            seq = seq
                .max(d.revocation_seq)
                .checked_add(1)
                .ok_or_else(|| ApiError::internal("the revocation sequence is exhausted"))?;
            d.revocation_seq = seq;
            let epoch = m.epoch_of(&d.device_id);
            revoked.push((d, epoch));
        }
        // Signing is most of the step's time (10,000 devices: about 0.2 s of the step's 0.43 s on
        // one core), and the writer waits for it: spread it over the cores.
        let envelopes = seal_all(&state.revocation_key, &revoked)?;
        let mut changes = Vec::with_capacity(revoked.len() * 3 + 1);
        let mut sealed = Vec::with_capacity(revoked.len());
        for ((d, _), env) in revoked.into_iter().zip(envelopes) {
            let device_id = DeviceId::parse(&d.device_id).map_err(ApiError::internal)?;
            if durable {
                changes.push(outbox::entry(&device_id, env.clone(), now_ms));
            }
            changes.push(super::audit::change_in(
                &auth,
                d.environment,
                now_ms,
                "device.revoke",
                d.device_id.clone(),
                Some(reason.clone()),
            ));
            answer.revoked.push(d.device_id.clone());
            changes.push(Change::Device(d));
            sealed.push((device_id, env));
        }
        if !answer.revoked.is_empty() {
            changes.push(Change::Counter(REVOCATION_SEQ, seq));
        }
        Ok(((answer, sealed), changes))
    });
    let (answer, sealed) = pending.await?;
    Metrics::add(&state.metrics.revocations, answer.revoked.len() as u64);
    tracing::info!(
        revoked = answer.revoked.len(),
        already_revoked = answer.already_revoked,
        auth = %auth.subject(),
        "bulk revocation"
    );
    let mut answer = answer;
    // The commit (with the outbox entries) is the guarantee: the transport pipelines the
    // envelopes and answers once the broker acknowledged them, at once if it is away.
    let committed = started.elapsed();
    answer.published = state.publisher.publish_committed(sealed).await;
    tracing::debug!(
        revoked = answer.revoked.len(),
        published = answer.published,
        committed_ms = committed.as_millis() as u64,
        answered_ms = started.elapsed().as_millis() as u64,
        "bulk revocation: durable, then acknowledged"
    );
    Ok(Json(answer))
}

/// The envelopes of `revoked`, in order, signed on up to four threads when there are many.
fn seal_all(
    key: &ed25519_dalek::SigningKey,
    revoked: &[(crate::store::DeviceRecord, u64)],
) -> ApiResult<Vec<Vec<u8>>> {
    const PER_THREAD_MIN: usize = 64;
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4)
        .min(revoked.len().div_ceil(PER_THREAD_MIN).max(1));
    if threads == 1 {
        return revoked
            .iter()
            .map(|(d, epoch)| super::devices::seal(key, d, *epoch))
            .collect();
    }
    let chunk = revoked.len().div_ceil(threads);
    std::thread::scope(|s| {
        let parts: Vec<_> = revoked
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|(d, epoch)| super::devices::seal(key, d, *epoch))
                        .collect::<ApiResult<Vec<_>>>()
                })
            })
            .collect();
        let mut all = Vec::with_capacity(revoked.len());
        for p in parts {
            all.extend(
                p.join()
                    .map_err(|_| ApiError::internal("signing revocations panicked"))??,
            );
        }
        Ok(all)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{DeviceRecord, DeviceState, Environment};

    fn revoked(i: usize) -> (DeviceRecord, u64) {
        let d = DeviceRecord {
            device_id: format!("dev-{i:05}"),
            public_key: [0; 32],
            state: DeviceState::Revoked,
            registered_at_ms: 0,
            last_refresh_at: None,
            metadata: Default::default(),
            keys: Vec::new(),
            refresh: Default::default(),
            revoked_at: Some(1),
            revoke_reason: Some("stolen".into()),
            revocation_seq: i as u64 + 1,
            bootstrap_token_id: None,
            environment: Environment::Live,
        };
        (d, 7)
    }

    #[test]
    fn envelopes_signed_on_several_threads_come_back_in_order_and_verify() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
        for n in [0, 1, 63, 64, 65, 1000] {
            let batch: Vec<_> = (0..n).map(revoked).collect();
            let envs = seal_all(&key, &batch).unwrap();
            assert_eq!(envs.len(), n);
            for ((d, epoch), env) in batch.iter().zip(&envs) {
                let rev = envelope::open(env, &key.verifying_key()).unwrap();
                assert_eq!(
                    (rev.device_id.as_str(), rev.epoch, rev.seq),
                    (d.device_id.as_str(), *epoch, d.revocation_seq)
                );
            }
        }
    }
}
