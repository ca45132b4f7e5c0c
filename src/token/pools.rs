//! User pool ids: their format, the region each one names, and the issuer
//! (`iss`) that the pool's access tokens carry.

use std::{fmt, str::FromStr, sync::Arc};

/// A user pool id, `<region>_<suffix>`: AWS's ids (`eu-west-1_AbCdEf123`)
/// and the longer alphanumeric suffixes emulators use. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserPoolId(Arc<str>);

/// Why a text is not a user pool id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a user pool id: expected <region>_<letters and digits>, for example eu-west-1_AbCdEf123"
)]
pub struct BadPoolId(pub String);

impl FromStr for UserPoolId {
    type Err = BadPoolId;

    fn from_str(text: &str) -> Result<Self, BadPoolId> {
        let bad = || BadPoolId(text.to_owned());
        let (region, suffix) = text.split_once('_').ok_or_else(bad)?;
        let suffix_ok = !suffix.is_empty()
            && suffix.len() <= 64
            && suffix.bytes().all(|b| b.is_ascii_alphanumeric());
        if !suffix_ok || !is_region(region) {
            return Err(bad());
        }
        Ok(Self(text.into()))
    }
}

/// An AWS region name: lowercase words joined by `-`, ending in a number
/// (`eu-west-1`, `us-gov-west-1`, `ap-southeast-5`).
pub(crate) fn is_region(text: &str) -> bool {
    let parts: Vec<&str> = text.split('-').collect();
    let Some((number, words)) = parts.split_last() else {
        return false;
    };
    words.len() >= 2
        && words
            .iter()
            .all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase()))
        && !number.is_empty()
        && number.len() <= 3
        && number.bytes().all(|b| b.is_ascii_digit())
}

impl UserPoolId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The region the pool lives in (the part before `_`).
    pub fn region(&self) -> &str {
        self.0.split_once('_').map_or("", |(region, _)| region)
    }

    /// The `iss` of the pool's tokens:
    /// `https://cognito-idp.<region>.amazonaws.com/<pool id>` (`.com.cn` in
    /// the China regions).
    pub fn issuer(&self) -> String {
        let region = self.region();
        let domain = if region.starts_with("cn-") {
            "amazonaws.com.cn"
        } else {
            "amazonaws.com"
        };
        format!("https://cognito-idp.{region}.{domain}/{}", self.0)
    }
}

impl fmt::Display for UserPoolId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_aws_and_emulator_ids() {
        for id in [
            "eu-west-1_AbCdEf123",
            "us-east-1_a",
            "us-gov-west-1_Xyz",
            "ap-southeast-5_0123456789abcdefghijABCDEFGHIJ",
        ] {
            let pool: UserPoolId = id.parse().unwrap();
            assert_eq!(pool.as_str(), id);
        }
        let pool: UserPoolId = "eu-west-1_AbC".parse().unwrap();
        assert_eq!(pool.region(), "eu-west-1");
        assert_eq!(
            pool.issuer(),
            "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_AbC"
        );
        let pool: UserPoolId = "cn-north-1_AbC".parse().unwrap();
        assert_eq!(
            pool.issuer(),
            "https://cognito-idp.cn-north-1.amazonaws.com.cn/cn-north-1_AbC"
        );
    }

    #[test]
    fn refuses_anything_else() {
        for id in [
            "",
            "eu-west-1",
            "eu-west-1_",
            "_AbC",
            "eu-west-1_Ab-C",
            "eu-west-1_Ab_C",
            "EU-west-1_AbC",
            "euwest1_AbC",
            "eu-west-x_AbC",
            "eu-west-1_AbC/../x",
            "eu-west-1_AbC ",
            "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_AbC",
        ] {
            assert!(id.parse::<UserPoolId>().is_err(), "{id:?}");
        }
    }
}
