//! A route's policy for Envoy's ext_authz, read from the `context_extensions`
//! Envoy sends with each Check (set per route, never sent upstream). The
//! keys and values are a contract with operators' configs:
//!
//! - `cognito-facade.require: mfa`: any MFA method is enabled;
//! - `cognito-facade.require: SOFTWARE_TOKEN_MFA,SMS_MFA`: any one of these
//!   (Cognito's names: `SMS_MFA`, `SOFTWARE_TOKEN_MFA`, `EMAIL_OTP`);
//! - `cognito-facade.require-factor: WEB_AUTHN`: any one of these sign-in
//!   factors is configured (`PASSWORD`, `EMAIL_OTP`, `SMS_OTP`,
//!   `WEB_AUTHN`, `SOFTWARE_TOKEN`);
//! - neither: a valid token suffices.
//!
//! Both keys together: both must hold. Any other key under
//! `cognito-facade.` (in any case, with `-` or `_`), or a value not listed,
//! is a configuration error, never an allow. Other keys belong to others and
//! are left alone.

use std::collections::HashMap;

use crate::proto::{AuthFactorType, GetUserAuthFactorsResponse, MfaType};

/// The key that requires MFA.
pub(crate) const REQUIRE: &str = "cognito-facade.require";
/// The key that requires a sign-in factor.
pub(crate) const REQUIRE_FACTOR: &str = "cognito-facade.require-factor";
/// The most of a wrong key or value quoted back.
const QUOTED: usize = 64;

/// A route's requirements.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Policy {
    mfa: Option<Mfa>,
    /// Any one of these factors.
    factors: Option<Vec<AuthFactorType>>,
}

#[derive(Debug, PartialEq, Eq)]
enum Mfa {
    /// Any MFA method.
    Any,
    /// Any one of these.
    AnyOf(Vec<MfaType>),
}

/// A requirement the user does not meet, with what would have met it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Unmet {
    Mfa(Vec<&'static str>),
    Factor(Vec<&'static str>),
}

/// A route configured wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum Wrong {
    #[error("unknown context_extensions key {0:?} (known: {REQUIRE}, {REQUIRE_FACTOR})")]
    UnknownKey(String),
    #[error("{key}: {value:?} is not one of {expected}")]
    UnknownValue {
        key: &'static str,
        value: String,
        expected: &'static str,
    },
}

const MFA_VALUES: &str = "mfa, or a comma-separated list of SMS_MFA, SOFTWARE_TOKEN_MFA, EMAIL_OTP";
const FACTOR_VALUES: &str =
    "a comma-separated list of PASSWORD, EMAIL_OTP, SMS_OTP, WEB_AUTHN, SOFTWARE_TOKEN";

impl Policy {
    /// The policy `extensions` describe.
    pub(crate) fn from_extensions(extensions: &HashMap<String, String>) -> Result<Self, Wrong> {
        let mut policy = Self::default();
        for (key, value) in extensions {
            match key.as_str() {
                REQUIRE => policy.mfa = Some(mfa(value)?),
                REQUIRE_FACTOR => policy.factors = Some(factors(value)?),
                // Ours in another spelling (`Cognito-Facade.require`,
                // `cognito_facade.require`): a typo must not drop a
                // requirement.
                other if looks_like_ours(other) => {
                    return Err(Wrong::UnknownKey(quoted(other)));
                }
                _ => {}
            }
        }
        Ok(policy)
    }

    /// Whether `user` meets the policy.
    pub(crate) fn check(&self, user: &GetUserAuthFactorsResponse) -> Result<(), Unmet> {
        let enabled = |m: &MfaType| user.user_mfa_setting_list.contains(&(*m as i32));
        match &self.mfa {
            Some(Mfa::Any) if !MFA_TYPES.iter().any(enabled) => {
                return Err(Unmet::Mfa(
                    MFA_TYPES.iter().map(|m| mfa_name(*m as i32)).collect(),
                ));
            }
            Some(Mfa::AnyOf(any_of)) if !any_of.iter().any(enabled) => {
                return Err(Unmet::Mfa(
                    any_of.iter().map(|m| mfa_name(*m as i32)).collect(),
                ));
            }
            _ => {}
        }
        if let Some(any_of) = &self.factors
            && !any_of
                .iter()
                .any(|f| user.configured_user_auth_factors.contains(&(*f as i32)))
        {
            return Err(Unmet::Factor(
                any_of.iter().map(|f| factor_name(*f as i32)).collect(),
            ));
        }
        Ok(())
    }
}

const MFA_TYPES: [MfaType; 3] = [
    MfaType::SmsMfa,
    MfaType::SoftwareTokenMfa,
    MfaType::EmailOtp,
];

/// An MFA method's Cognito name (`SOFTWARE_TOKEN_MFA`); empty if unknown.
pub(crate) fn mfa_name(value: i32) -> &'static str {
    MfaType::try_from(value)
        .ok()
        .and_then(|m| m.as_str_name().strip_prefix("MFA_TYPE_"))
        .filter(|name| *name != "UNSPECIFIED")
        .unwrap_or_default()
}

/// A sign-in factor's Cognito name (`WEB_AUTHN`); empty if unknown.
pub(crate) fn factor_name(value: i32) -> &'static str {
    AuthFactorType::try_from(value)
        .ok()
        .and_then(|f| f.as_str_name().strip_prefix("AUTH_FACTOR_TYPE_"))
        .filter(|name| *name != "UNSPECIFIED")
        .unwrap_or_default()
}

fn mfa(value: &str) -> Result<Mfa, Wrong> {
    if value.trim() == "mfa" {
        return Ok(Mfa::Any);
    }
    let wrong = || Wrong::UnknownValue {
        key: REQUIRE,
        value: quoted(value),
        expected: MFA_VALUES,
    };
    let any_of = list(value, |name| {
        MfaType::from_str_name(&format!("MFA_TYPE_{name}")).filter(|m| *m != MfaType::Unspecified)
    })
    .ok_or_else(wrong)?;
    Ok(Mfa::AnyOf(any_of))
}

fn factors(value: &str) -> Result<Vec<AuthFactorType>, Wrong> {
    list(value, |name| {
        AuthFactorType::from_str_name(&format!("AUTH_FACTOR_TYPE_{name}"))
            .filter(|f| *f != AuthFactorType::Unspecified)
    })
    .ok_or_else(|| Wrong::UnknownValue {
        key: REQUIRE_FACTOR,
        value: quoted(value),
        expected: FACTOR_VALUES,
    })
}

/// A comma-separated list, each item known to `parse`; `None` if any is
/// not, or the list is empty.
fn list<T>(value: &str, parse: impl Fn(&str) -> Option<T>) -> Option<Vec<T>> {
    let items: Option<Vec<T>> = value.split(',').map(|item| parse(item.trim())).collect();
    items.filter(|items| !items.is_empty())
}

/// Whether `key` names this facade at all: `cognito-facade` in any case,
/// with any separator or none, anywhere in the key (a stray leading space,
/// a `x-` prefix, a zero-width character). Only the exact keys are
/// requirements; a key like this that is not one is a configuration error,
/// never a requirement silently dropped.
fn looks_like_ours(key: &str) -> bool {
    let letters: String = key
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    letters.contains("cognitofacade")
}

/// At most [`QUOTED`] characters of an operator's text, for the log.
fn quoted(text: &str) -> String {
    text.chars().take(QUOTED).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(pairs: &[(&str, &str)]) -> Result<Policy, Wrong> {
        let map = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Policy::from_extensions(&map)
    }

    fn user(mfa: &[MfaType], factors: &[AuthFactorType]) -> GetUserAuthFactorsResponse {
        GetUserAuthFactorsResponse {
            user_mfa_setting_list: mfa.iter().map(|m| *m as i32).collect(),
            configured_user_auth_factors: factors.iter().map(|f| *f as i32).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_documented_keys_and_values_hold() {
        let totp = user(&[MfaType::SoftwareTokenMfa], &[AuthFactorType::Password]);
        let password = user(&[], &[AuthFactorType::Password]);
        let none = policy(&[("other.filter", "x")]).unwrap();
        assert_eq!((none.check(&totp), none.check(&password)), (Ok(()), Ok(())));
        let mfa = policy(&[(REQUIRE, "mfa")]).unwrap();
        assert_eq!(mfa.check(&totp), Ok(()));
        assert_eq!(
            mfa.check(&password),
            Err(Unmet::Mfa(vec![
                "SMS_MFA",
                "SOFTWARE_TOKEN_MFA",
                "EMAIL_OTP"
            ]))
        );
        let sms_or_totp = policy(&[(REQUIRE, "SOFTWARE_TOKEN_MFA, SMS_MFA")]).unwrap();
        assert_eq!(sms_or_totp.check(&totp), Ok(()));
        let sms = policy(&[(REQUIRE, "SMS_MFA")]).unwrap();
        assert_eq!(sms.check(&totp), Err(Unmet::Mfa(vec!["SMS_MFA"])));
        let passkey = policy(&[(REQUIRE_FACTOR, "WEB_AUTHN")]).unwrap();
        assert_eq!(passkey.check(&totp), Err(Unmet::Factor(vec!["WEB_AUTHN"])));
        let both = policy(&[(REQUIRE, "mfa"), (REQUIRE_FACTOR, "PASSWORD")]).unwrap();
        assert_eq!(both.check(&totp), Ok(()));
        assert!(both.check(&password).is_err());
    }

    #[test]
    fn other_keys_are_not_ours() {
        let policy = policy(&[("envoy.route", "x"), ("facade", "y"), ("cognito", "z")]);
        assert!(policy.is_ok_and(|p| p.mfa.is_none() && p.factors.is_none()));
    }

    #[test]
    fn anything_else_under_the_prefix_is_a_configuration_error() {
        for pairs in [
            &[("cognito-facade.requires", "mfa")][..],
            &[("Cognito-Facade.require", "mfa")],
            &[("cognito_facade.require", "mfa")],
            &[("cognito-facade-require", "mfa")],
            &[(" cognito-facade.require", "mfa")],
            &[("cognito-facade.require ", "mfa")],
            &[("\u{200b}cognito-facade.require", "mfa")],
            &[("x-cognito-facade.require", "mfa")],
            &[("cognitofacade.require", "mfa")],
            &[("COGNITO FACADE REQUIRE", "mfa")],
            &[(REQUIRE, "MFA")],
            &[(REQUIRE, "")],
            &[(REQUIRE, "SOFTWARE_TOKEN_MFA,")],
            &[(REQUIRE, "UNSPECIFIED")],
            &[(REQUIRE, "MFA_TYPE_SMS_MFA")],
            &[(REQUIRE_FACTOR, "mfa")],
            &[(REQUIRE_FACTOR, "PASSKEY")],
        ] {
            assert!(policy(pairs).is_err(), "{pairs:?}");
        }
        let long = "X".repeat(1000);
        let Err(wrong) = policy(&[(REQUIRE, long.as_str())]) else {
            panic!("a long value");
        };
        assert!(wrong.to_string().len() < 300, "{wrong}");
    }
}
