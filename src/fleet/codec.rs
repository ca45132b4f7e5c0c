//! What the fleet stores, inside the seal: the kind (an answer, a kept
//! answer standing in for Cognito, a refusal, or a flight's leader giving
//! up), when it was stored (for a kept answer: when Cognito gave it) and
//! when it goes stale (milliseconds since the epoch: a value put back after
//! its time, by hand or from a backup, does not open), then the outcome (an
//! answer's request id and protobuf, or a refusal's JSON).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message as _;

use crate::{
    base::wire::Operation,
    error::{Error, UpstreamError, UpstreamErrorKind},
    proto::GetUserAuthFactorsResponse,
    upstream::Answer,
};

const KIND_ANSWER: u8 = 1;
const KIND_REFUSAL: u8 = 2;
const KIND_ABANDONED: u8 = 3;
/// An answer kept for `--stale-if-error`: it opens as a stale one, its age
/// counted from when it was stored.
const KIND_KEPT: u8 = 4;

/// A value as stored, opened.
#[derive(Debug)]
pub(super) struct Stored {
    pub(super) stored_at: SystemTime,
    pub(super) stale_at: SystemTime,
    /// The outcome; `None`: the flight's leader gave up (its own trouble
    /// reaching Cognito), and its followers join again.
    pub(super) outcome: Option<Result<Answer, Error>>,
}

/// Whether an outcome is Cognito's own word on the token (shared), rather
/// than this replica's trouble reaching it (not shared).
pub(super) fn shareable(outcome: &Result<Answer, Error>) -> bool {
    match outcome {
        Ok(_) => true,
        Err(Error::Upstream(up)) => {
            use UpstreamErrorKind as K;
            match up.kind {
                K::NotAuthorized
                | K::UserNotAuthorized
                | K::InvalidParameter
                | K::ResourceNotFound
                | K::UserNotFound
                | K::UserNotConfirmed
                | K::PasswordResetRequired
                | K::OperationNotEnabled => true,
                // Not the token's fault: a WAF rule (perhaps on the leader's
                // own address), a code this version cannot judge, or the
                // leader's own credentials.
                K::Forbidden
                | K::Unmodeled
                | K::TooManyRequests
                | K::InternalError
                | K::Unavailable
                | K::Unreachable
                | K::Timeout
                | K::BadResponse
                | K::RequestConstruction
                | K::RateLimited
                | K::AccessDenied
                | K::UnrecognizedClient
                | K::InvalidSignature
                | K::ExpiredToken
                | K::MissingSignature
                | K::CredentialsUnavailable
                | K::CredentialsSourceFailed => false,
            }
        }
        Err(_) => false,
    }
}

/// A refusal as stored.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredRefusal {
    code: Option<String>,
    message: Option<String>,
    request_id: Option<String>,
    reason_code: Option<Box<str>>,
}

/// The plaintext of `outcome` (`None`: the leader gave up), stored at
/// `stored_at` (a kept answer: when Cognito gave it) and stale at
/// `stale_at`.
pub(super) fn encode(
    outcome: Option<&Result<Answer, Error>>,
    stored_at: SystemTime,
    stale_at: SystemTime,
) -> Vec<u8> {
    let kind = match outcome {
        None => KIND_ABANDONED,
        Some(Ok(answer)) if answer.kept_since.is_some() => KIND_KEPT,
        Some(Ok(_)) => KIND_ANSWER,
        Some(Err(_)) => KIND_REFUSAL,
    };
    // A kept answer's age runs from when Cognito gave it, wherever it goes.
    let stored_at = match outcome {
        Some(Ok(answer)) => answer.kept_since.unwrap_or(stored_at),
        _ => stored_at,
    };
    let mut out = vec![kind];
    out.extend_from_slice(&unix_millis(stored_at).to_be_bytes());
    out.extend_from_slice(&unix_millis(stale_at).to_be_bytes());
    match outcome {
        Some(Ok(answer)) => {
            let id = answer.request_id.as_deref().unwrap_or_default().as_bytes();
            let len = u16::try_from(id.len()).unwrap_or(0);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&id[..usize::from(len)]);
            answer.response.encode(&mut out).unwrap_or_default();
        }
        Some(Err(Error::Upstream(up))) => {
            let stored = StoredRefusal {
                code: up.aws_error_code.clone(),
                message: up.message.clone(),
                request_id: up.request_id.clone(),
                reason_code: up.reason_code.clone(),
            };
            out.extend(serde_json::to_vec(&stored).unwrap_or_default());
        }
        Some(Err(_)) | None => {}
    }
    out
}

/// A stored value, or `None` if it is stale at `now` or malformed.
///
/// Replicas' clocks differ. A stamp of when a value was stored (or given
/// by Cognito) that is after `now` came from a clock ahead of this one: it
/// opens, as of `now`, so that no age counted from it (the cache's TTL, a
/// kept answer's grace) runs longer here than this replica would have let
/// it. The time it goes stale is absolute (a token's `exp` at the latest)
/// and is obeyed as it is.
pub(super) fn decode(plain: &[u8], now: SystemTime, operation: Operation) -> Option<Stored> {
    let (&kind, rest) = plain.split_first()?;
    let (stored_at, rest) = rest.split_at_checked(8)?;
    let (stale_at, rest) = rest.split_at_checked(8)?;
    let stored_at = from_unix_millis(stored_at)?.min(now);
    let stale_at = from_unix_millis(stale_at)?;
    if now >= stale_at {
        return None;
    }
    let outcome = match kind {
        KIND_ABANDONED => None,
        KIND_ANSWER => Some(Ok(decode_answer(rest, stored_at, stale_at)?)),
        KIND_KEPT => Some(Ok(Answer {
            kept_since: Some(stored_at),
            fresh_until: None,
            ..decode_answer(rest, stored_at, stale_at)?
        })),
        KIND_REFUSAL => Some(Err(Error::Upstream(decode_refusal(rest, operation)?))),
        _ => return None,
    };
    Some(Stored {
        stored_at,
        stale_at,
        outcome,
    })
}

fn decode_answer(body: &[u8], stored_at: SystemTime, stale_at: SystemTime) -> Option<Answer> {
    let len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    let id = std::str::from_utf8(body.get(2..2 + len)?).ok()?;
    let response = GetUserAuthFactorsResponse::decode(body.get(2 + len..)?).ok()?;
    Some(Answer {
        response,
        request_id: (!id.is_empty()).then(|| id.to_owned()),
        fresh_until: Some(stale_at),
        kept_since: None,
        given_at: Some(stored_at),
    })
}

fn decode_refusal(body: &[u8], operation: Operation) -> Option<UpstreamError> {
    let stored: StoredRefusal = serde_json::from_slice(body).ok()?;
    let kind = stored
        .code
        .as_deref()
        .and_then(|code| UpstreamErrorKind::from_aws_code(code, operation))
        .unwrap_or(UpstreamErrorKind::Unmodeled);
    let mut up = UpstreamError::new(kind);
    up.aws_error_code = stored.code;
    up.message = stored.message;
    up.request_id = stored.request_id;
    up.reason_code = stored.reason_code;
    Some(up)
}

pub(super) fn unix_millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |since| {
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    })
}

fn from_unix_millis(bytes: &[u8]) -> Option<SystemTime> {
    UNIX_EPOCH.checked_add(Duration::from_millis(u64::from_be_bytes(
        bytes.try_into().ok()?,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token's stored value, decoded.
    fn decode(plain: &[u8], now: SystemTime) -> Option<Stored> {
        super::decode(plain, now, Operation::GetUserAuthFactors)
    }

    fn answer() -> Result<Answer, Error> {
        Ok(Answer {
            response: GetUserAuthFactorsResponse {
                username: "alice".to_owned(),
                ..Default::default()
            },
            request_id: Some("req-1".to_owned()),
            fresh_until: None,
            kept_since: None,
            given_at: None,
        })
    }

    #[test]
    fn outcomes_round_trip_and_only_cognitos_word_is_shared() {
        let now = SystemTime::now();
        let later = now + Duration::from_secs(60);
        assert!(
            decode(&encode(Some(&answer()), now, now), now).is_none(),
            "a value past its time does not open"
        );
        let stored = decode(&encode(Some(&answer()), now, later), now).unwrap();
        let Some(Ok(back)) = stored.outcome else {
            panic!("an answer");
        };
        assert_eq!(back.response.username, "alice");
        assert_eq!(back.request_id.as_deref(), Some("req-1"));
        assert_eq!(unix_millis(stored.stored_at), unix_millis(now));
        let mut revoked = UpstreamError::new(UpstreamErrorKind::NotAuthorized);
        revoked.aws_error_code = Some("NotAuthorizedException".to_owned());
        revoked.message = Some("Access Token has been revoked".to_owned());
        let refusal = Err(Error::Upstream(revoked));
        assert!(shareable(&refusal));
        let Some(Err(Error::Upstream(back))) = decode(&encode(Some(&refusal), now, later), now)
            .unwrap()
            .outcome
        else {
            panic!("a refusal");
        };
        assert_eq!(back.kind, UpstreamErrorKind::NotAuthorized);
        assert_eq!(
            back.message.as_deref(),
            Some("Access Token has been revoked")
        );
        // The same code stored for a named user is Cognito's word on the
        // user, not on a token.
        let plain = encode(Some(&refusal), now, later);
        let user = super::decode(&plain, now, Operation::AdminGetUserAuthFactors).unwrap();
        let Some(Err(Error::Upstream(back))) = user.outcome else {
            panic!("a refusal");
        };
        assert_eq!(back.kind, UpstreamErrorKind::UserNotAuthorized);
        for kind in [UpstreamErrorKind::Timeout, UpstreamErrorKind::Unreachable] {
            assert!(!shareable(&Err(Error::Upstream(UpstreamError::new(kind)))));
        }
        assert!(
            decode(&encode(None, now, later), now)
                .unwrap()
                .outcome
                .is_none()
        );
        assert!(decode(&[9, 1, 2], now).is_none());
    }

    /// Replicas 30 s apart (§6 of issue 40): a value from a writer ahead
    /// opens here, aged from now, not from its future; one past its time
    /// here (a token's `exp`, on this clock) does not, whoever wrote it.
    #[test]
    fn a_writers_clock_30_s_off_neither_hides_nor_stretches_a_value() {
        let now = SystemTime::now();
        let skew = Duration::from_secs(30);
        let exp = now + Duration::from_secs(20);
        let Ok(fresh) = answer() else { unreachable!() };
        let kept = |given| {
            Ok(Answer {
                kept_since: Some(given),
                request_id: None,
                ..fresh.clone()
            })
        };
        // Ahead: given "in the future", kept until the token's exp.
        let ahead = now + skew;
        let stored = decode(&encode(Some(&kept(ahead)), ahead, exp), now).expect("it opens");
        assert_eq!(unix_millis(stored.stored_at), unix_millis(now));
        let Some(Ok(back)) = stored.outcome else {
            panic!("an answer");
        };
        assert_eq!(back.kept_since.map(unix_millis), Some(unix_millis(now)));
        // An answer cached "in the future" ages from now.
        let cached = decode(&encode(Some(&answer()), ahead, ahead + skew), now).unwrap();
        assert_eq!(unix_millis(cached.stored_at), unix_millis(now));
        // Behind or ahead, never past the token's exp on this clock.
        let behind = now - skew;
        for writer in [ahead, behind] {
            let value = encode(Some(&kept(writer)), writer, exp);
            assert!(decode(&value, exp).is_none());
            assert!(decode(&value, exp + skew).is_none());
            assert!(decode(&value, exp - Duration::from_millis(1)).is_some());
        }
    }

    #[test]
    fn a_kept_answer_opens_stale_aged_from_when_cognito_gave_it() {
        let now = SystemTime::now();
        let given = now - Duration::from_secs(90);
        let Ok(fresh) = answer() else { unreachable!() };
        let kept = Ok(Answer {
            kept_since: Some(given),
            request_id: None,
            ..fresh
        });
        let stored = decode(
            &encode(Some(&kept), now, now + Duration::from_secs(60)),
            now,
        )
        .unwrap();
        assert_eq!(unix_millis(stored.stored_at), unix_millis(given));
        let Some(Ok(back)) = stored.outcome else {
            panic!("an answer");
        };
        assert_eq!(back.kept_since.map(unix_millis), Some(unix_millis(given)));
        assert_eq!((back.request_id, back.fresh_until), (None, None));
        assert_eq!(back.response.username, "alice");
        // A fresh answer opens fresh.
        let fresh = decode(
            &encode(Some(&answer()), now, now + Duration::from_secs(60)),
            now,
        );
        let Some(Ok(fresh)) = fresh.unwrap().outcome else {
            panic!("an answer");
        };
        assert!(fresh.kept_since.is_none());
    }
}
