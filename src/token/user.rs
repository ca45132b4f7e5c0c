//! A user named by pool and username (AdminGetUserAuthFactors), and whose
//! answer a call asks for: a token's owner or such a user.

use std::{borrow::Cow, fmt, sync::LazyLock, time::Duration};

use super::{AccessToken, LONGEST_LIFETIME, pools::UserPoolId};
use crate::base::wire::Operation;

/// The longest username Cognito accepts, in characters (the service model's
/// `UsernameType`).
pub(crate) const MAX_USERNAME_CHARS: usize = 128;

/// The request field that carries the username.
pub(crate) const USERNAME_FIELD: &str = "username";

/// The model's pattern for `UsernameType`, `[\p{L}\p{M}\p{S}\p{N}\p{P}]+`,
/// over the whole text: letters, marks, symbols, numbers and punctuation,
/// so no space, separator, control or format character.
static USERNAME_PATTERN: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(r"^[\p{L}\p{M}\p{S}\p{N}\p{P}]+$").expect("the model's pattern compiles")
});

/// A username that passed validation: personal data, so `Debug` and
/// `Display` print `[REDACTED]`; only [`Username::expose`] gives the text,
/// for the one upstream call that needs it.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Username(String);

impl Username {
    /// Validates `text` as Cognito would: 1 to 128 characters of the
    /// model's pattern.
    pub(crate) fn parse(text: &str) -> Result<Self, UsernameError> {
        let chars = text.chars().count();
        if chars == 0 {
            return Err(UsernameError::Missing);
        }
        if chars > MAX_USERNAME_CHARS {
            return Err(UsernameError::TooLong { chars });
        }
        if !USERNAME_PATTERN.is_match(text) {
            return Err(UsernameError::InvalidCharacters);
        }
        Ok(Self(text.to_owned()))
    }

    /// The username, to send to Cognito. Never log it.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(crate::base::wire::REDACTED)
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(crate::base::wire::REDACTED)
    }
}

/// Why a username is not one Cognito accepts. Messages never quote it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsernameError {
    /// The field is empty.
    #[error("username is empty; name the user (1 to 128 characters)")]
    Missing,
    /// More than [`MAX_USERNAME_CHARS`] characters.
    #[error("username is {chars} characters; at most {MAX_USERNAME_CHARS} are allowed")]
    TooLong {
        /// Its length in characters.
        chars: usize,
    },
    /// A space, separator, control or format character.
    #[error(
        "username may contain only letters, marks, symbols, numbers and punctuation (no spaces or control characters)"
    )]
    InvalidCharacters,
}

/// How long a named user's definitive refusal keeps answers given before it
/// from being copied: longer than any call then in flight (a call lasts at
/// most `--call-timeout`, 5 s by default).
pub(crate) const USER_REVOCATION: Duration = Duration::from_secs(300);

/// The longest a definitive refusal's revocation mark lasts for a subject
/// of `operation` (cut to a token's `exp`). A revoked token never comes
/// back, so any answer for it landing later was given before: the mark
/// lasts as long as the token could. A user can (re-created, re-enabled),
/// so its mark only outlasts the calls in flight when the refusal came, and
/// its answers are cached again after that.
pub(crate) fn revocation_horizon(operation: Operation) -> Duration {
    match operation {
        Operation::GetUserAuthFactors => LONGEST_LIFETIME,
        Operation::AdminGetUserAuthFactors => USER_REVOCATION,
    }
}

/// Whose authentication factors a call asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Subject {
    /// The owner of an access token (GetUserAuthFactors).
    Token(AccessToken),
    /// A user named by pool and username (AdminGetUserAuthFactors).
    User(UserPoolId, Username),
}

impl Subject {
    /// What keys it in this process's maps and names it in the fleet: a
    /// token's own text, or for a user `\0user\0<pool>\0<username>`, which
    /// no token can be (a token holds no NUL), so a user and a token never
    /// share a key.
    pub(crate) fn keyed(&self) -> Cow<'_, [u8]> {
        match self {
            Self::Token(token) => Cow::Borrowed(token.expose().as_bytes()),
            Self::User(pool, username) => {
                let mut keyed = b"\0user\0".to_vec();
                keyed.extend_from_slice(pool.as_str().as_bytes());
                keyed.push(0);
                keyed.extend_from_slice(username.expose().as_bytes());
                Cow::Owned(keyed)
            }
        }
    }

    /// The longest a definitive refusal's revocation mark lasts
    /// ([`revocation_horizon`]).
    pub(crate) fn revocation_horizon(&self) -> Duration {
        revocation_horizon(self.operation())
    }

    /// The Cognito operation that answers for it.
    pub(crate) fn operation(&self) -> Operation {
        match self {
            Self::Token(_) => Operation::GetUserAuthFactors,
            Self::User(..) => Operation::AdminGetUserAuthFactors,
        }
    }

    /// The access token, for a token's owner.
    pub(crate) fn token(&self) -> Option<&AccessToken> {
        match self {
            Self::Token(token) => Some(token),
            Self::User(..) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_what_the_model_accepts() {
        for name in [
            "alice",
            "alice.example@example.com",
            "+447700900123",
            "8f6d2c1e-0b7a-4c55-9a51-3f1e2d4c5b6a",
            "Zoë_Ålander",
            "名前",
            "user$#!%&'*/=?^`{|}~",
            &"a".repeat(MAX_USERNAME_CHARS),
            &"é".repeat(MAX_USERNAME_CHARS),
        ] {
            assert_eq!(Username::parse(name).unwrap().expose(), name);
        }
    }

    #[test]
    fn refuses_what_the_model_refuses_without_quoting_it() {
        let refused = [
            ("", UsernameError::Missing),
            (
                &"a".repeat(MAX_USERNAME_CHARS + 1),
                UsernameError::TooLong { chars: 129 },
            ),
            ("alice smith", UsernameError::InvalidCharacters),
            ("alice\n", UsernameError::InvalidCharacters),
            ("alice\u{0}", UsernameError::InvalidCharacters),
            ("ali\u{200b}ce", UsernameError::InvalidCharacters),
            ("alice\u{a0}", UsernameError::InvalidCharacters),
            ("\u{e000}", UsernameError::InvalidCharacters),
        ];
        for (name, expected) in refused {
            let err = Username::parse(name).unwrap_err();
            assert_eq!(err, expected, "{name:?}");
            assert!(name.is_empty() || !err.to_string().contains(name));
        }
    }

    #[test]
    fn never_prints_the_username() {
        let user = Username::parse("alice.secret").unwrap();
        let pool: UserPoolId = "eu-west-1_AbC".parse().unwrap();
        let subject = Subject::User(pool, user.clone());
        for printed in [
            format!("{user}"),
            format!("{user:?}"),
            format!("{subject:?}"),
        ] {
            assert!(!printed.contains("alice"), "{printed}");
        }
    }

    #[test]
    fn a_user_and_a_token_never_share_a_key() {
        let pool: UserPoolId = "eu-west-1_AbC".parse().unwrap();
        let user = Subject::User(pool.clone(), Username::parse("a").unwrap());
        let other = Subject::User(pool, Username::parse("b").unwrap());
        assert_ne!(user.keyed(), other.keyed());
        assert!(user.keyed().starts_with(b"\0user\0eu-west-1_AbC\0"));
        // No token can spell a user's key: a NUL is refused as a token's
        // character, whichever way the token arrives.
        let spelled = String::from_utf8(user.keyed().into_owned()).unwrap();
        let metadata = tonic::metadata::MetadataMap::new();
        assert!(super::super::extract(&spelled, &metadata).is_err());
        assert!(
            format!("Bearer {spelled}")
                .parse::<tonic::metadata::MetadataValue<_>>()
                .is_err(),
            "metadata cannot carry a NUL at all"
        );
    }
}
