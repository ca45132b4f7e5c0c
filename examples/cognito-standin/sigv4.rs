//! The stand-in's check of a SigV4-signed request, as AWS makes it before an
//! IAM-authorised operation runs: the signature is computed again with the
//! AWS SDK's own signer (`aws-sigv4`) over the headers the request says it
//! signed, under the one key pair the stand-in knows, and each way a request
//! can fail the check gets AWS's own error.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
    let incomplete = || {
        Reply::error(
            400,
            "IncompleteSignatureException",
            "Authorization header requires 'Credential', 'Signature' and 'SignedHeaders'",
        )
    };
    let signed = Authorization::parse(authorization).ok_or_else(incomplete)?;
    let scope: Vec<&str> = signed.credential.split('/').collect();
    let [key_id, _date, region, service, "aws4_request"] = scope[..] else {
        return Err(incomplete());
    };
    if key_id != ACCESS_KEY_ID {
        return Err(Reply::error(
            400,
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        ));
    }
    let session_token = header("x-amz-security-token");
    if session_token == Some(EXPIRED_SESSION_TOKEN) {
        return Err(Reply::error(
            400,
            "ExpiredTokenException",
            "The security token included in the request is expired",
        ));
    }
    let mismatch = || {
        Reply::error(
            400,
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method.",
        )
    };
    let time = header("x-amz-date")
        .and_then(amz_date)
        .ok_or_else(mismatch)?;
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
    let mut signed_headers = Vec::new();
    for name in signed.headers.split(';') {
        signed_headers.push((name, header(name).ok_or_else(mismatch)?));
    }
    let host = header("host").ok_or_else(mismatch)?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
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
        .region(region)
        .name(service)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|_| mismatch())?
        .into();
    let request = SignableRequest::new(
        method.as_str(),
        format!("http://{host}{path}"),
        signed_headers.into_iter(),
        SignableBody::Bytes(body),
    )
    .map_err(|_| mismatch())?;
    let (_, expected) = sign(request, &params).map_err(|_| mismatch())?.into_parts();
    if service != "cognito-idp" || expected != signed.signature {
        return Err(mismatch());
    }
    Ok(())
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

/// An `x-amz-date` (`20261207T204400Z`) as a time.
fn amz_date(text: &str) -> Option<SystemTime> {
    let digits = |range: std::ops::Range<usize>| text.get(range)?.parse::<i64>().ok();
    if text.len() != 16 || text.as_bytes()[8] != b'T' || !text.ends_with('Z') {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(4..6)?, digits(6..8)?);
    let (hour, minute, second) = (digits(9..11)?, digits(11..13)?, digits(13..15)?);
    // Days from 1970-01-01 to the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second;
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).ok()?))
}

#[cfg(test)]
mod tests {
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
