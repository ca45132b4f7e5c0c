//! Signing keys made at test time, their JWKS, and Cognito-shaped access
//! tokens signed with them (RS256 through aws-lc-rs: the service under test
//! verifies with the `jsonwebtoken` crate, so the two sides share no code).

use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::{
    rand::SystemRandom,
    rsa::{KeyPair, KeySize},
    signature::{KeyPair as _, RSA_PKCS1_SHA256},
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::{Value, json};

use crate::helpers::USERNAME;

/// The scope GetUserAuthFactors needs.
pub(crate) const ADMIN_SCOPE: &str = "aws.cognito.signin.user.admin";
/// The app client of the tokens made here.
pub(crate) const CLIENT_ID: &str = "testclient1";

/// An RSA signing key with a `kid`.
#[derive(Debug)]
pub(crate) struct SigningKey {
    pub(crate) kid: String,
    pair: KeyPair,
}

impl SigningKey {
    /// A fresh 2048-bit key.
    pub(crate) fn generate(kid: &str) -> Self {
        Self {
            kid: kid.to_owned(),
            pair: KeyPair::generate(KeySize::Rsa2048).unwrap(),
        }
    }

    /// The public key as a JWK, as Cognito publishes it.
    pub(crate) fn jwk(&self) -> Value {
        let public = self.pair.public_key();
        json!({
            "kty": "RSA",
            "alg": "RS256",
            "use": "sig",
            "kid": self.kid,
            "n": URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()),
            "e": URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero()),
        })
    }

    /// `claims` signed with RS256 under this key's `kid`.
    pub(crate) fn sign(&self, claims: &Value) -> String {
        self.sign_with_header(&json!({ "kid": self.kid, "alg": "RS256" }), claims)
    }

    /// `claims` under any header, signed with RS256.
    pub(crate) fn sign_with_header(&self, header: &Value, claims: &Value) -> String {
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut signature = vec![0; self.pair.public_modulus_len()];
        self.pair
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                signing_input.as_bytes(),
                &mut signature,
            )
            .unwrap();
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }
}

/// A JWKS holding `keys`.
pub(crate) fn jwks(keys: &[&SigningKey]) -> Value {
    json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() })
}

/// Seconds since the epoch.
pub(crate) fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The issuer of `pool`'s tokens.
pub(crate) fn issuer(pool: &str) -> String {
    let region = pool.split('_').next().unwrap();
    format!("https://cognito-idp.{region}.amazonaws.com/{pool}")
}

/// The claims of a Cognito access token of `pool` that expires in
/// `expires_in` seconds (negative: expired).
pub(crate) fn access_claims(pool: &str, expires_in: i64) -> Value {
    let now = now();
    json!({
        "sub": "5f1c1a2e-0000-4000-8000-00000000beef",
        "iss": issuer(pool),
        "client_id": CLIENT_ID,
        "origin_jti": "0b4c6ad8-0000-4000-8000-000000000001",
        "event_id": "0b4c6ad8-0000-4000-8000-000000000002",
        "token_use": "access",
        "scope": ADMIN_SCOPE,
        "auth_time": now - 60,
        "exp": now + expires_in,
        "iat": now - 60,
        "jti": "0b4c6ad8-0000-4000-8000-000000000003",
        "username": USERNAME,
    })
}

/// `token` with one character of its payload changed (still base64url).
pub(crate) fn tamper(token: &str) -> String {
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let payload = &mut parts[1];
    let middle = payload.len() / 2;
    let old = payload.as_bytes()[middle];
    let new = if old == b'A' { 'B' } else { 'A' };
    payload.replace_range(middle..=middle, &new.to_string());
    parts.join(".")
}
