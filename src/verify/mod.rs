//! What the token says, used before any call to Cognito: which configured
//! pool (and so which region) it belongs to, and, with verification on,
//! whether it is a genuine, unexpired access token of that pool (signature
//! against the pool's JWKS, `exp`, `iss`, `token_use`, `scope`,
//! `client_id`). Refusals here are ones Cognito would also make, or a pool
//! or client this facade does not serve; Cognito stays the authority for
//! everything else (revocation above all), so no call is ever answered OK
//! without it.
//!
//! Layer 5, above `upstream` and `error`; `jwks` fetches and refreshes the
//! pools' signing keys.
//!
//! Files, lowest first: `jwks`.

pub(crate) mod jwks;

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, Validation, errors::ErrorKind};
use serde::Deserialize;
use tonic::codegen::http::Uri;

use crate::{
    base::expiring::{ExpiringMap, TokenKeyer},
    base::metric_names,
    token::pools::UserPoolId,
    token::{AccessToken, Refusal},
    upstream::UpstreamConfig,
    verify::jwks::{DEFAULT_REFRESH_INTERVAL, KeyStore, Lookup},
};

/// The scope GetUserAuthFactors requires (the service model's
/// `aws.cognito.signin.user.admin`).
pub(crate) const REQUIRED_SCOPE: &str = "aws.cognito.signin.user.admin";

/// How long after `exp` a token is still given to Cognito rather than
/// refused here: our clock may run ahead of Cognito's, and a local refusal
/// must be one Cognito would also make.
pub(crate) const EXPIRY_LEEWAY: Duration = Duration::from_secs(10);

/// Most tokens remembered as verified. A few hundred bytes each.
const MEMO_MAX_ENTRIES: usize = 10_000;

/// How long a call may wait for its pool's keys when the caller set no
/// deadline (the fetch itself is bounded too).
const KEY_WAIT: Duration = Duration::from_secs(3);

/// Token settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenConfig {
    /// The pools served; none means opaque mode (tokens are not read, calls
    /// go to the default region).
    pub pools: Vec<UserPoolId>,
    /// Whether tokens of the configured pools are verified locally.
    pub verify: bool,
    /// The app clients served; empty means any.
    pub client_ids: Vec<String>,
    /// Least time between two JWKS refreshes of a pool for unknown `kid`s.
    pub jwks_refresh_interval: Duration,
}

impl Default for TokenConfig {
    /// Opaque mode; verification on as soon as pools are given.
    fn default() -> Self {
        Self {
            pools: Vec::new(),
            verify: true,
            client_ids: Vec::new(),
            jwks_refresh_interval: DEFAULT_REFRESH_INTERVAL,
        }
    }
}

impl TokenConfig {
    /// The regions of the configured pools.
    pub fn regions(&self) -> BTreeSet<String> {
        self.pools.iter().map(|p| p.region().to_owned()).collect()
    }
}

/// What the check learned about a token it let through.
#[derive(Debug, Clone, Default)]
pub(crate) struct Checked {
    /// The configured pool it belongs to (`None` in opaque mode).
    pub pool: Option<UserPoolId>,
    /// Its `exp` (from the verified token, or, where not verified, from its
    /// unverified payload, which can only shorten a cache entry's life).
    pub expires_at: Option<SystemTime>,
    /// How far it was checked: its signature too, or only its claims.
    pub verification: Verification,
}

/// How far a token let through was checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Verification {
    /// Opaque mode, or verification off (`--verify-tokens=false`): the
    /// token's claims were read for its pool only.
    #[default]
    NotAsked,
    /// Signature and claims.
    Verified,
    /// Its pool's key set could not be had: every claim was checked, its
    /// signature was not (Cognito verifies it instead).
    Unverified,
}

impl Verification {
    /// As the call's log line says it (`verification`); `""` when not asked.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::NotAsked => "",
            Self::Verified => "verified",
            Self::Unverified => "unverified",
        }
    }
}

/// The check every call passes before single flight and Cognito.
#[derive(Debug, Clone)]
pub(crate) struct TokenGate {
    /// Configured pools by the `iss` their tokens carry.
    issuers: HashMap<String, UserPoolId>,
    verify: bool,
    client_ids: HashSet<String>,
    keys: KeyStore,
    validation: Validation,
    /// Tokens already verified, until their `exp`, by their MAC.
    keyer: TokenKeyer,
    memo: Arc<ExpiringMap<Checked>>,
}

impl TokenGate {
    /// The gate for `config`, fetching JWKS from each pool's issuer, or from
    /// the endpoint override of its region. Fetches nothing yet: see
    /// [`Self::prefetch`].
    pub(crate) fn new(config: &TokenConfig, upstream: &UpstreamConfig, keyer: TokenKeyer) -> Self {
        let keys = config
            .pools
            .iter()
            .filter(|_| config.verify)
            .map(|pool| (pool.clone(), jwks_url(pool, upstream)))
            .collect();
        let mut validation = Validation::new(Algorithm::RS256);
        validation.leeway = EXPIRY_LEEWAY.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = false;
        // Access tokens carry `client_id`, not `aud`.
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "iss"]);
        validation.set_issuer(
            &config
                .pools
                .iter()
                .map(UserPoolId::issuer)
                .collect::<Vec<_>>(),
        );
        Self {
            issuers: config
                .pools
                .iter()
                .map(|pool| (pool.issuer(), pool.clone()))
                .collect(),
            verify: config.verify,
            client_ids: config.client_ids.iter().cloned().collect(),
            keys: KeyStore::new(keys, config.jwks_refresh_interval),
            validation,
            keyer,
            memo: Arc::new(ExpiringMap::new(MEMO_MAX_ENTRIES)),
        }
    }

    /// The configured pool whose id is `id`, if it is one: the pools
    /// AdminGetUserAuthFactors answers for.
    pub(crate) fn served_pool(&self, id: &str) -> Option<&UserPoolId> {
        self.issuers.values().find(|pool| pool.as_str() == id)
    }

    /// Starts fetching every pool's keys in the background (start-up never
    /// waits for them).
    pub(crate) fn prefetch(&self) {
        self.keys.prefetch();
    }

    /// Checks `token`, waiting for its pool's keys at most until `deadline`.
    /// In opaque mode it reads nothing and refuses nothing.
    pub(crate) async fn check(
        &self,
        token: &AccessToken,
        deadline: Option<Instant>,
    ) -> Result<Checked, Refusal> {
        if self.issuers.is_empty() {
            return Ok(Checked::default());
        }
        let result = self.check_known(token, deadline).await;
        if let Err(refusal) = &result {
            let reason = crate::error::refusal_status(*refusal).1;
            metrics::counter!(metric_names::TOKEN_REFUSALS, "reason" => reason).increment(1);
        }
        result
    }

    async fn check_known(
        &self,
        token: &AccessToken,
        deadline: Option<Instant>,
    ) -> Result<Checked, Refusal> {
        let text = token.expose();
        let (kid, pool, claims) = self.read_unverified(text)?;
        if !self.verify {
            return Ok(Checked {
                pool: Some(pool),
                expires_at: claims.expires_at(),
                verification: Verification::NotAsked,
            });
        }
        // A token verified before, and not yet expired, is not verified
        // again: the RSA check alone costs ~18 µs of CPU, and clients reuse
        // an access token for its whole life. Keyed by a MAC, like the cache.
        let memo_key = self.keyer.key(text);
        if let Some(checked) = self.memo.get(&memo_key, Instant::now()) {
            return Ok(checked);
        }
        let kid = kid.ok_or(Refusal::KeyUnknown)?;
        let deadline = deadline.unwrap_or_else(|| Instant::now() + KEY_WAIT);
        let key = match self.keys.lookup(&pool, &kid, deadline).await {
            Lookup::Found(key) => key,
            Lookup::UnknownKid => return Err(Refusal::KeyUnknown),
            // Fail open, never wide: every check that needs no signature
            // still applies, and Cognito verifies the signature instead.
            Lookup::Unavailable => return self.unverified(pool, &claims),
        };
        let claims = self.verified_claims(text, &key)?;
        let checked = Checked {
            pool: Some(pool),
            expires_at: claims.expires_at(),
            verification: Verification::Verified,
        };
        if let Some(expires) = memo_expiry(&checked) {
            self.memo.insert(memo_key, checked.clone(), expires);
        }
        Ok(checked)
    }

    /// A token whose pool's key set cannot be had: let through only if its
    /// claims pass every check that needs no signature (`exp` with the same
    /// leeway as a verified one, then token use, scope and client), counted
    /// and marked unverified. Never remembered as verified.
    fn unverified(&self, pool: UserPoolId, claims: &Claims) -> Result<Checked, Refusal> {
        let expires_at = claims.expires_at().ok_or(Refusal::Malformed)?;
        if SystemTime::now() > expires_at + EXPIRY_LEEWAY {
            return Err(Refusal::Expired);
        }
        self.claims_allowed(claims)?;
        metrics::counter!(metric_names::TOKENS_UNVERIFIED, "pool" => pool.as_str().to_owned())
            .increment(1);
        Ok(Checked {
            pool: Some(pool),
            expires_at: Some(expires_at),
            verification: Verification::Unverified,
        })
    }

    /// What the token says before its signature is checked: its key id, its
    /// pool (a configured one, or the refusal) and its claims.
    fn read_unverified(&self, text: &str) -> Result<(Option<String>, UserPoolId, Claims), Refusal> {
        let parts = JwtParts::split(text).ok_or(Refusal::Malformed)?;
        let header: Header = parts.header()?;
        if header.alg != "RS256" {
            return Err(Refusal::AlgorithmNotAllowed);
        }
        let payload: Claims = match parts.payload() {
            Ok(payload) => payload,
            Err(refusal) => {
                return Err(self.unreadable_payload(text, header.kid.as_deref(), refusal));
            }
        };
        let pool = self
            .issuers
            .get(&payload.iss)
            .ok_or(Refusal::PoolNotAllowed)?
            .clone();
        Ok((header.kid, pool, payload))
    }

    /// The claims of a token whose signature `key` verifies, if it is an
    /// access token with the admin scope for an allowed client.
    fn verified_claims(
        &self,
        text: &str,
        key: &jsonwebtoken::DecodingKey,
    ) -> Result<Claims, Refusal> {
        let claims = jsonwebtoken::decode::<Claims>(text, key, &self.validation)
            .map_err(|err| match err.kind() {
                ErrorKind::InvalidSignature => Refusal::SignatureInvalid,
                ErrorKind::ExpiredSignature => Refusal::Expired,
                ErrorKind::InvalidIssuer => Refusal::PoolNotAllowed,
                ErrorKind::InvalidAlgorithm => Refusal::AlgorithmNotAllowed,
                _ => Refusal::Malformed,
            })?
            .claims;
        self.claims_allowed(&claims)?;
        Ok(claims)
    }

    /// Whether `claims` are an access token's, with the admin scope, for an
    /// allowed client.
    fn claims_allowed(&self, claims: &Claims) -> Result<(), Refusal> {
        if claims.token_use.as_deref() != Some("access") {
            return Err(Refusal::NotAccess);
        }
        let scoped = claims
            .scope
            .as_deref()
            .is_some_and(|scope| scope.split(' ').any(|s| s == REQUIRED_SCOPE));
        if !scoped {
            return Err(Refusal::ScopeMissing);
        }
        let client_allowed = self.client_ids.is_empty()
            || claims
                .client_id
                .as_ref()
                .is_some_and(|id| self.client_ids.contains(id));
        if !client_allowed {
            return Err(Refusal::ClientNotAllowed);
        }
        Ok(())
    }
}

/// How long a verified token is remembered: until its `exp` and the leeway
/// `decode` allows beyond it, on this process's monotonic clock.
fn memo_expiry(checked: &Checked) -> Option<Instant> {
    let left = (checked.expires_at? + EXPIRY_LEEWAY)
        .duration_since(SystemTime::now())
        .ok()?;
    Instant::now().checked_add(left)
}

impl TokenGate {
    /// A payload that cannot be read names no pool, yet it may be a genuine
    /// token altered in transit or by hand: if a pool's key with its `kid` is
    /// at hand and the signature does not verify with it, that is the
    /// refusal; otherwise the token is malformed.
    fn unreadable_payload(&self, token: &str, kid: Option<&str>, malformed: Refusal) -> Refusal {
        let (Some(kid), true) = (kid, self.verify) else {
            return malformed;
        };
        let Some((signing_input, signature)) = token.rsplit_once('.') else {
            return malformed;
        };
        let forged = self.keys.cached(kid).iter().any(|key| {
            jsonwebtoken::crypto::verify(signature, signing_input.as_bytes(), key, Algorithm::RS256)
                .is_ok_and(|valid| !valid)
        });
        if forged {
            Refusal::SignatureInvalid
        } else {
            malformed
        }
    }
}

/// The JWKS URL of `pool`: `<override>/<pool id>/.well-known/jwks.json` with
/// an endpoint override for its region, else `<iss>/.well-known/jwks.json`.
fn jwks_url(pool: &UserPoolId, upstream: &UpstreamConfig) -> Uri {
    let url = match upstream.endpoint_for(pool.region()) {
        Some(endpoint) => format!(
            "{}/{pool}/.well-known/jwks.json",
            endpoint.trim_end_matches('/')
        ),
        None => format!("{}/.well-known/jwks.json", pool.issuer()),
    };
    // Both parts are validated (an http(s) URL, a pool id), so this parses;
    // if it did not, the fetch fails and calls fall through to Cognito.
    url.parse().unwrap_or_default()
}

/// The `exp` of `token`'s unverified payload, if it is a JWT with one. Only
/// ever used to shorten a cache entry's life.
pub(crate) fn unverified_expiry(token: &AccessToken) -> Option<SystemTime> {
    let parts = JwtParts::split(token.expose())?;
    parts.payload::<Expiry>().ok()?.expires_at()
}

/// The three base64url parts of a compact JWS.
struct JwtParts<'t> {
    header: &'t str,
    payload: &'t str,
}

impl<'t> JwtParts<'t> {
    fn split(token: &'t str) -> Option<Self> {
        let mut parts = token.split('.');
        let (header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
        parts.next().is_none().then_some(Self { header, payload })
    }

    fn header<T: for<'de> Deserialize<'de>>(&self) -> Result<T, Refusal> {
        decode_part(self.header)
    }

    fn payload<T: for<'de> Deserialize<'de>>(&self) -> Result<T, Refusal> {
        decode_part(self.payload)
    }
}

fn decode_part<T: for<'de> Deserialize<'de>>(part: &str) -> Result<T, Refusal> {
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| Refusal::Malformed)?;
    serde_json::from_slice(&json).map_err(|_| Refusal::Malformed)
}

/// The JOSE header, read before any key is chosen: `alg` as text, so that
/// `none` or `HS256` are told apart from a header that is not JSON.
#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
}

/// The claims read from a Cognito access token. The username is never read.
#[derive(Deserialize)]
struct Claims {
    iss: String,
    exp: Option<u64>,
    token_use: Option<String>,
    scope: Option<String>,
    client_id: Option<String>,
}

impl Claims {
    fn expires_at(&self) -> Option<SystemTime> {
        expiry(self.exp)
    }
}

/// Just the `exp` of a payload.
#[derive(Deserialize)]
struct Expiry {
    exp: Option<u64>,
}

impl Expiry {
    fn expires_at(&self) -> Option<SystemTime> {
        expiry(self.exp)
    }
}

/// An `exp` claim (seconds since the epoch) as a time.
fn expiry(exp: Option<u64>) -> Option<SystemTime> {
    UNIX_EPOCH.checked_add(Duration::from_secs(exp?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checked(expires_in: i64) -> Checked {
        let now = SystemTime::now();
        let delta = Duration::from_secs(expires_in.unsigned_abs());
        Checked {
            pool: Some("eu-west-1_AbC".parse().unwrap()),
            expires_at: Some(if expires_in >= 0 {
                now + delta
            } else {
                now - delta
            }),
            verification: Verification::Verified,
        }
    }

    #[test]
    fn a_verified_token_is_remembered_until_its_exp_and_the_leeway() {
        let leeway = EXPIRY_LEEWAY.as_secs() as i64;
        let live = memo_expiry(&checked(60)).unwrap();
        let left = live - Instant::now();
        assert!(
            left > Duration::from_secs(69) && left <= Duration::from_secs(70),
            "{left:?}"
        );
        assert!(memo_expiry(&checked(-leeway + 2)).is_some());
        assert_eq!(memo_expiry(&checked(-leeway - 1)), None);
        assert_eq!(memo_expiry(&Checked::default()), None);
    }

    #[test]
    fn unverified_expiry_reads_only_jwts() {
        let claims =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"exp":2000000000}"#);
        let token = |text: &str| crate::token::extract(text, &Default::default()).unwrap();
        assert_eq!(
            unverified_expiry(&token(&format!("eyJhbGciOiJSUzI1NiJ9.{claims}.c2ln"))),
            UNIX_EPOCH.checked_add(Duration::from_secs(2_000_000_000))
        );
        assert_eq!(unverified_expiry(&token("opaque")), None);
        assert_eq!(unverified_expiry(&token("a.bm90IGpzb24.c")), None);
    }
}
