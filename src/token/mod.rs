//! The caller's access token: where it comes from, what makes it acceptable,
//! and a type that never prints it.
//!
//! Layer 2, above `base`; `pools` holds user pool ids and regions, as the
//! token's issuer names them; `user` a user named by pool and username
//! (AdminGetUserAuthFactors), and whose answer a call asks for.
//!
//! Files, lowest first: `pools`, `user`.

pub(crate) mod pools;
pub(crate) mod user;

use std::fmt;

use tonic::metadata::MetadataMap;

/// The largest access token accepted, in bytes. Cognito's tokens are a few KiB;
/// the bound keeps hostile input from reaching the SDK.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The request field that carries the token.
pub(crate) const TOKEN_FIELD: &str = "access_token";

/// The longest a Cognito access token lives (its app client's validity is
/// at most a day): what a token's revocation is remembered for when its
/// `exp` is not known.
pub(crate) const LONGEST_LIFETIME: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// The metadata key that carries the token when the field is empty.
pub(crate) const AUTHORIZATION_KEY: &str = "authorization";

/// An access token that passed validation. `Debug` and `Display` print
/// `[REDACTED]`; only [`AccessToken::expose`] gives the text, for the one
/// upstream call that needs it.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken(String);

impl AccessToken {
    /// The token text, to send to Cognito. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
impl AccessToken {
    /// A token taken as it is, for unit tests of what holds one.
    pub(crate) fn for_tests(text: &str) -> Self {
        Self(text.to_owned())
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(crate::base::wire::REDACTED)
    }
}

impl fmt::Display for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(crate::base::wire::REDACTED)
    }
}

/// Why no usable token could be taken from a request. Messages never quote the
/// token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Neither the field nor `authorization` metadata holds a token.
    #[error(
        "no access token: set the access_token field or send `authorization: Bearer <token>` metadata"
    )]
    Missing,
    /// The field and the metadata hold two different tokens.
    #[error("access_token and the authorization metadata hold different tokens; send one")]
    Conflicting,
    /// `authorization` metadata that is not `Bearer <token>` in visible ASCII.
    #[error("authorization metadata must be `Bearer <token>`")]
    MalformedAuthorization,
    /// A token longer than [`MAX_TOKEN_BYTES`].
    #[error("access token is {len} bytes; at most {MAX_TOKEN_BYTES} are allowed")]
    TooLong {
        /// Where the token came from.
        origin: TokenSource,
        /// Its length in bytes.
        len: usize,
    },
    /// A token with a character outside `[A-Za-z0-9-_=.]`.
    #[error("access token may contain only A-Z, a-z, 0-9, '-', '_', '=' and '.'")]
    InvalidCharacters {
        /// Where the token came from.
        origin: TokenSource,
    },
}

/// Declares [`Refusal`] and [`Refusal::ALL`] from one list, so a new kind
/// cannot be left out of `ALL` (and so out of the README-table test).
macro_rules! refusals {
    ($($(#[$doc:meta])* $kind:ident => $message:literal,)*) => {
        /// Why a well-formed token was refused here, without a call to
        /// Cognito (local verification, `crate::verify`). Each is a refusal
        /// Cognito would also make, or a pool or client this facade does not
        /// serve.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
        pub enum Refusal {
            $($(#[$doc])* #[error($message)] $kind,)*
        }

        impl Refusal {
            /// Every kind, in the README's order.
            pub const ALL: &'static [Self] = &[$(Self::$kind,)*];
        }
    };
}

refusals! {
    /// Not a JWT: not three base64url parts, or a header or payload that is
    /// not the JSON of a Cognito token.
    Malformed => "the access token is not a well-formed JWT",
    /// A signing algorithm other than RS256 (`none` and HMAC included).
    AlgorithmNotAllowed => "the access token is not signed with RS256",
    /// A `kid` the pool's JWKS does not hold, even after a refresh.
    KeyUnknown => "the access token is signed with a key its user pool does not publish",
    /// The signature does not verify with the pool's key.
    SignatureInvalid => "the access token's signature does not verify",
    /// `token_use` is not `access` (an ID token, for example).
    NotAccess => "the token is not an access token",
    /// `exp` has passed (beyond a small leeway).
    Expired => "the access token has expired",
    /// `scope` lacks `aws.cognito.signin.user.admin`.
    ScopeMissing => "the access token lacks the aws.cognito.signin.user.admin scope",
    /// A valid token of a user pool this facade does not serve.
    PoolNotAllowed => "the access token's user pool is not served here",
    /// A valid token of an app client this facade does not serve.
    ClientNotAllowed => "the access token's app client is not served here",
}

/// Where a token was found, for `google.rpc.BadRequest` field violations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    /// The `access_token` request field.
    Field,
    /// `authorization: Bearer` request metadata.
    Metadata,
}

impl TokenSource {
    /// The name a field violation reports.
    pub fn field_name(self) -> &'static str {
        match self {
            Self::Field => TOKEN_FIELD,
            Self::Metadata => AUTHORIZATION_KEY,
        }
    }
}

impl TokenError {
    /// The request field or metadata key a `BadRequest` violation should name,
    /// where the error is about one.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Self::Missing | Self::Conflicting => None,
            Self::MalformedAuthorization => Some(AUTHORIZATION_KEY),
            Self::TooLong { origin, .. } | Self::InvalidCharacters { origin } => {
                Some(origin.field_name())
            }
        }
    }
}

/// Takes the token from the request field, or from `authorization: Bearer`
/// metadata when the field is empty, and validates it.
pub fn extract(field: &str, metadata: &MetadataMap) -> Result<AccessToken, TokenError> {
    let from_metadata = bearer_token(metadata)?;
    let (token, source) = match (field.is_empty(), from_metadata) {
        (true, None) => return Err(TokenError::Missing),
        (true, Some(header)) => (header, TokenSource::Metadata),
        (false, Some(header)) if header != field => return Err(TokenError::Conflicting),
        (false, _) => (field, TokenSource::Field),
    };
    validate(token, source)?;
    Ok(AccessToken(token.to_owned()))
}

/// The token of `authorization: Bearer <token>`, if that metadata is present.
fn bearer_token(metadata: &MetadataMap) -> Result<Option<&str>, TokenError> {
    let Some(value) = metadata.get(AUTHORIZATION_KEY) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| TokenError::MalformedAuthorization)?;
    bearer_of(value).map(Some)
}

/// The token of an `authorization` value, `Bearer <token>`.
fn bearer_of(value: &str) -> Result<&str, TokenError> {
    let (scheme, token) = value
        .split_once(' ')
        .ok_or(TokenError::MalformedAuthorization)?;
    // RFC 9110 §11.1: the scheme is case-insensitive.
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(TokenError::MalformedAuthorization);
    }
    let token = token.trim_matches(' ');
    if token.is_empty() {
        return Err(TokenError::MalformedAuthorization);
    }
    Ok(token)
}

/// The token of an HTTP `authorization: Bearer <token>` header's value (as
/// Envoy's Check carries it), checked as the RPC checks its own metadata:
/// a value that is not visible ASCII is malformed, as metadata's would be.
pub(crate) fn from_authorization(value: &str) -> Result<AccessToken, TokenError> {
    if !value
        .bytes()
        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
    {
        return Err(TokenError::MalformedAuthorization);
    }
    let token = bearer_of(value)?;
    validate(token, TokenSource::Metadata)?;
    Ok(AccessToken(token.to_owned()))
}

/// Checks the model's constraints on `TokenModelType`: the pattern
/// `[A-Za-z0-9-_=.]+` and, ours, at most [`MAX_TOKEN_BYTES`].
fn validate(token: &str, source: TokenSource) -> Result<(), TokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::TooLong {
            origin: source,
            len: token.len(),
        });
    }
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'=' | b'.');
    if token.is_empty() || !token.bytes().all(allowed) {
        return Err(TokenError::InvalidCharacters { origin: source });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "eyJraWQiOiJ4In0.eyJzdWIiOiJ5In0.c2ln-_=";

    fn metadata(authorization: Option<&str>) -> MetadataMap {
        let mut map = MetadataMap::new();
        if let Some(value) = authorization {
            map.insert(AUTHORIZATION_KEY, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn takes_the_field() {
        let token = extract(TOKEN, &metadata(None)).unwrap();
        assert_eq!(token.expose(), TOKEN);
    }

    #[test]
    fn takes_bearer_metadata_when_the_field_is_empty() {
        let token = extract("", &metadata(Some(&format!("Bearer {TOKEN}")))).unwrap();
        assert_eq!(token.expose(), TOKEN);
        let token = extract("", &metadata(Some(&format!("bearer  {TOKEN}")))).unwrap();
        assert_eq!(token.expose(), TOKEN);
    }

    #[test]
    fn accepts_the_same_token_in_both_places() {
        let token = extract(TOKEN, &metadata(Some(&format!("Bearer {TOKEN}")))).unwrap();
        assert_eq!(token.expose(), TOKEN);
    }

    #[test]
    fn refuses_two_different_tokens() {
        let err = extract(TOKEN, &metadata(Some("Bearer other"))).unwrap_err();
        assert_eq!(err, TokenError::Conflicting);
    }

    #[test]
    fn refuses_no_token() {
        assert_eq!(
            extract("", &metadata(None)).unwrap_err(),
            TokenError::Missing
        );
    }

    #[test]
    fn refuses_authorization_that_is_not_bearer() {
        for value in ["Basic dXNlcjpwYXNz", "Bearer", "Bearer   ", TOKEN] {
            let err = extract("", &metadata(Some(value))).unwrap_err();
            assert_eq!(err, TokenError::MalformedAuthorization, "{value}");
            assert_eq!(err.field(), Some(AUTHORIZATION_KEY));
        }
    }

    #[test]
    fn refuses_characters_outside_the_model_pattern() {
        for token in ["a b", "a+b", "a/b", "tok\u{e9}n", "a\u{7}b", "a\nb"] {
            let err = extract(token, &metadata(None)).unwrap_err();
            assert_eq!(
                err,
                TokenError::InvalidCharacters {
                    origin: TokenSource::Field
                },
                "{token:?}"
            );
            assert_eq!(err.field(), Some(TOKEN_FIELD));
        }
        let err = extract("", &metadata(Some("Bearer a+b"))).unwrap_err();
        assert_eq!(err.field(), Some(AUTHORIZATION_KEY));
    }

    #[test]
    fn bounds_the_length() {
        let longest = "a".repeat(MAX_TOKEN_BYTES);
        assert!(extract(&longest, &metadata(None)).is_ok());
        let too_long = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(
            extract(&too_long, &metadata(None)).unwrap_err(),
            TokenError::TooLong {
                origin: TokenSource::Field,
                len: MAX_TOKEN_BYTES + 1
            }
        );
    }

    #[test]
    fn never_prints_the_token() {
        let token = extract(TOKEN, &metadata(None)).unwrap();
        assert_eq!(format!("{token:?}"), "[REDACTED]");
        assert_eq!(format!("{token}"), "[REDACTED]");
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        fn allowed(token: &str) -> bool {
            !token.is_empty()
                && token.len() <= MAX_TOKEN_BYTES
                && token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'=' | b'.'))
        }

        proptest! {
            /// Whatever the field and the header hold, extraction answers
            /// without panicking, and what it accepts fits the model's pattern.
            #[test]
            fn extraction_accepts_only_model_tokens(field in ".{0,64}", header in proptest::option::of(".{0,64}")) {
                let mut map = MetadataMap::new();
                if let Some(value) = header.as_deref().and_then(|h| h.parse().ok()) {
                    map.insert(AUTHORIZATION_KEY, value);
                }
                if let Ok(token) = extract(&field, &map) {
                    prop_assert!(allowed(token.expose()));
                    prop_assert_eq!(format!("{token:?}"), "[REDACTED]");
                }
            }

            /// A token that fits the pattern is always accepted from the field.
            #[test]
            fn model_tokens_are_accepted(token in "[A-Za-z0-9_=.-]{1,512}") {
                let extracted = extract(&token, &MetadataMap::new()).unwrap();
                prop_assert_eq!(extracted.expose(), token.as_str());
            }
        }
    }

    /// The header's value read directly (ext_authz) refuses exactly what
    /// the same value as metadata would: parsed as a header value, read
    /// back as visible ASCII, then the token's own rules.
    #[test]
    fn an_authorization_value_is_read_as_its_metadata_would_be() {
        let long = format!("Bearer {}", "a".repeat(MAX_TOKEN_BYTES + 1));
        let cases = [
            format!("Bearer {TOKEN}"),
            format!("bearer   {TOKEN}  "),
            format!("Bearer\t{TOKEN}"),
            format!("Bearer {TOKEN}\u{e9}"),
            format!("Bearer {TOKEN}\u{7f}"),
            format!("Bearer {TOKEN}\n"),
            "Basic dXNlcjpwYXNz".to_owned(),
            "Bearer".to_owned(),
            "Bearer a+b".to_owned(),
            long,
        ];
        for value in cases {
            let direct = from_authorization(&value);
            let as_metadata = match value.parse::<tonic::metadata::MetadataValue<_>>() {
                Ok(parsed) => {
                    let mut metadata = MetadataMap::new();
                    metadata.insert(AUTHORIZATION_KEY, parsed);
                    extract("", &metadata)
                }
                Err(_) => Err(TokenError::MalformedAuthorization),
            };
            assert_eq!(direct, as_metadata, "{value:?}");
        }
    }
}
