//! The stand-in's check of a SigV4-signed request, as AWS makes it before an
//! IAM-authorised operation runs: the signature is computed again with the
//! AWS SDK's own signer (`aws-sigv4`) over the headers the request says it
//! signed, under the one key pair the stand-in knows, and each way a request
//! can fail the check gets AWS's own error.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::{
    http_request::{SignableBody, SignableRequest, SigningSettings, sign},
    sign::v4,
};
use axum::http::{HeaderMap, Method, Uri};

use super::Reply;

/// The access key id the stand-in knows (AWS's documented example key).
pub(crate) const ACCESS_KEY_ID: &str = "AKIAIOSFODNN7EXAMPLE";
/// Its secret access key (AWS's documented example key).
pub(crate) const SECRET_ACCESS_KEY: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
/// A session token the stand-in treats as expired.
pub(crate) const EXPIRED_SESSION_TOKEN: &str = "expired-session-token";
/// How far a request's time may be from the stand-in's, as AWS allows.
const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// The headers AWS requires every SigV4 request to sign (with a JSON
/// protocol's target): a signature that leaves one out does not verify.
const MUST_SIGN: [&str; 3] = ["host", "x-amz-date", "x-amz-target"];

/// `Ok` if the request is signed (SigV4, service `cognito-idp`) by
/// [`ACCESS_KEY_ID`] with [`SECRET_ACCESS_KEY`]; otherwise AWS's refusal.
pub(crate) fn verify(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), Reply> {
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    let Some(authorization) = header("authorization") else {
        return Err(Reply::error(
            400,
            "MissingAuthenticationTokenException",
            "Missing Authentication Token",
        ));
    };
    let signed = Authorization::parse(authorization).ok_or_else(incomplete)?;
    let scope = Scope::parse(signed.credential).ok_or_else(incomplete)?;
    let session_token = header("x-amz-security-token");
    known_credentials(scope.key_id, session_token)?;
    let time = header("x-amz-date")
        .and_then(amz_date)
        .ok_or_else(mismatch)?;
    within_skew(time)?;
    let names: Vec<&str> = signed.headers.split(';').collect();
    if scope.service != "cognito-idp" || MUST_SIGN.iter().any(|name| !names.contains(name)) {
        return Err(mismatch());
    }
    let signed_headers = names
        .into_iter()
        .map(|name| Some((name, header(name)?)))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(mismatch)?;
    let host = header("host").ok_or_else(mismatch)?;
    let url = format!(
        "http://{host}{}",
        uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let expected = signature(
        &scope,
        session_token,
        time,
        (method, &url, signed_headers, body),
    )
    .ok_or_else(mismatch)?;
    if expected != signed.signature {
        return Err(mismatch());
    }
    Ok(())
}

/// AWS's answer to an `Authorization` header it cannot read.
fn incomplete() -> Reply {
    Reply::error(
        400,
        "IncompleteSignatureException",
        "Authorization header requires 'Credential', 'Signature' and 'SignedHeaders'",
    )
}

/// AWS's answer to a signature that does not verify.
fn mismatch() -> Reply {
    Reply::error(
        400,
        "InvalidSignatureException",
        "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method.",
    )
}

/// `Ok` for the one key the stand-in knows, without an expired session.
fn known_credentials(key_id: &str, session_token: Option<&str>) -> Result<(), Reply> {
    if key_id != ACCESS_KEY_ID {
        return Err(Reply::error(
            400,
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        ));
    }
    if session_token == Some(EXPIRED_SESSION_TOKEN) {
        return Err(Reply::error(
            400,
            "ExpiredTokenException",
            "The security token included in the request is expired",
        ));
    }
    Ok(())
}

/// `Ok` for a request signed within [`CLOCK_SKEW`] of now.
fn within_skew(time: SystemTime) -> Result<(), Reply> {
    let skew = match SystemTime::now().duration_since(time) {
        Ok(behind) => behind,
        Err(ahead) => ahead.duration(),
    };
    if skew > CLOCK_SKEW {
        return Err(Reply::error(
            400,
            "InvalidSignatureException",
            "Signature expired",
        ));
    }
    Ok(())
}

/// The signature of `request` (its method, URL, signed headers and body)
/// under the stand-in's key, for `scope` at `time`, as AWS computes it.
fn signature(
    scope: &Scope<'_>,
    session_token: Option<&str>,
    time: SystemTime,
    request: (&Method, &str, Vec<(&str, &str)>, &[u8]),
) -> Option<String> {
    let (method, url, headers, body) = request;
    let identity = Credentials::new(
        ACCESS_KEY_ID,
        SECRET_ACCESS_KEY,
        session_token.map(str::to_owned),
        None,
        "stand-in",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(scope.region)
        .name(scope.service)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .ok()?
        .into();
    let request = SignableRequest::new(
        method.as_str(),
        url,
        headers.into_iter(),
        SignableBody::Bytes(body),
    )
    .ok()?;
    let (_, signature) = sign(request, &params).ok()?.into_parts();
    Some(signature)
}

/// A credential scope: `<key id>/<date>/<region>/<service>/aws4_request`.
struct Scope<'a> {
    key_id: &'a str,
    region: &'a str,
    service: &'a str,
}

impl<'a> Scope<'a> {
    fn parse(credential: &'a str) -> Option<Self> {
        let scope: Vec<&str> = credential.split('/').collect();
        let [key_id, _date, region, service, "aws4_request"] = scope[..] else {
            return None;
        };
        Some(Self {
            key_id,
            region,
            service,
        })
    }
}

/// The parts of `Authorization: AWS4-HMAC-SHA256 Credential=…,
/// SignedHeaders=…, Signature=…`.
struct Authorization<'a> {
    credential: &'a str,
    headers: &'a str,
    signature: &'a str,
}

impl<'a> Authorization<'a> {
    fn parse(value: &'a str) -> Option<Self> {
        let fields = value.strip_prefix("AWS4-HMAC-SHA256 ")?;
        let (mut credential, mut headers, mut signature) = (None, None, None);
        for field in fields.split(',') {
            match field.trim().split_once('=')? {
                ("Credential", value) => credential = Some(value),
                ("SignedHeaders", value) => headers = Some(value),
                ("Signature", value) => signature = Some(value),
                _ => return None,
            }
        }
        Some(Self {
            credential: credential?,
            headers: headers?,
            signature: signature?,
        })
    }
}

/// An `x-amz-date` (`20261207T204400Z`, ISO 8601's basic format) as a
/// time: the same instant in RFC 3339, read by `humantime`.
fn amz_date(text: &str) -> Option<SystemTime> {
    let part = |range: std::ops::Range<usize>| {
        text.get(range)
            .filter(|digits| digits.bytes().all(|b| b.is_ascii_digit()))
    };
    if text.len() != 16 || text.as_bytes()[8] != b'T' || !text.ends_with('Z') {
        return None;
    }
    let rfc3339 = format!(
        "{}-{}-{}T{}:{}:{}Z",
        part(0..4)?,
        part(4..6)?,
        part(6..8)?,
        part(9..11)?,
        part(11..13)?,
        part(13..15)?
    );
    humantime::parse_rfc3339(&rfc3339).ok()
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    #[test]
    fn amz_dates_read_as_the_times_they_name() {
        let at = |text| {
            amz_date(text)
                .unwrap()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs()
        };
        assert_eq!(at("19700101T000000Z"), 0);
        assert_eq!(at("20000301T000000Z"), 951_868_800);
        assert_eq!(at("20261207T204400Z"), 1_796_676_240);
        assert!(amz_date("2026-12-07T20:44:00Z").is_none());
    }
}
