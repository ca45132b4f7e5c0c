//! The store's settings: where Redis is, how long a call gives it, and the
//! key files (the fleet key, the previous one during a rotation, and the
//! naming key that keeps key names across rotations).

use std::{fmt, path::Path, time::Duration};

/// Default budget Redis gets for one operation within a call: loopback and
/// in-zone round trips take well under a millisecond.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(20);

/// The least length of a fleet key file.
pub const MIN_FLEET_KEY_BYTES: usize = 32;

/// Whether `--redis-url` names one server or a cluster's seed nodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum RedisMode {
    /// One server (or a primary behind a proxy or a Sentinel-managed name).
    #[default]
    Standalone,
    /// A Redis Cluster; the URL is a comma-separated list of seed nodes.
    Cluster,
}

/// A fleet secret: at least [`MIN_FLEET_KEY_BYTES`] random bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct FleetKey(pub(crate) Vec<u8>);

impl fmt::Debug for FleetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(crate::base::wire::REDACTED)
    }
}

/// Why a key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FleetKeyError {
    /// It cannot be read.
    #[error("cannot read --{flag} {path}: {source}")]
    Read {
        /// The flag that named it.
        flag: &'static str,
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// It is too short to be a key.
    #[error(
        "--{flag} {path} holds {len} bytes; at least {MIN_FLEET_KEY_BYTES} random bytes are needed"
    )]
    Short {
        /// The flag that named it.
        flag: &'static str,
        /// The file.
        path: String,
        /// Its length.
        len: usize,
    },
    /// Anyone on the machine may read it.
    #[error("--{flag} {path} is world-readable (mode {mode:o}); make it 0600 or 0640")]
    WorldReadable {
        /// The flag that named it.
        flag: &'static str,
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
}

impl FleetKey {
    /// Reads and checks the key file that `flag` names (its contents as
    /// they are, trailing newline included: it is bytes, not text).
    pub fn from_file(flag: &'static str, path: &Path) -> Result<Self, FleetKeyError> {
        use std::os::unix::fs::PermissionsExt as _;
        let shown = path.display().to_string();
        let read = |source| FleetKeyError::Read {
            flag,
            path: shown.clone(),
            source,
        };
        let mode = std::fs::metadata(path).map_err(read)?.permissions().mode();
        if mode & 0o004 != 0 {
            return Err(FleetKeyError::WorldReadable {
                flag,
                path: shown,
                mode: mode & 0o777,
            });
        }
        let bytes = std::fs::read(path).map_err(read)?;
        if bytes.len() < MIN_FLEET_KEY_BYTES {
            return Err(FleetKeyError::Short {
                flag,
                path: shown,
                len: bytes.len(),
            });
        }
        Ok(Self(bytes))
    }
}

/// The fleet store's settings. `Debug` never shows a URL's password.
#[derive(Clone, PartialEq, Eq)]
pub struct FleetConfig {
    /// `redis://` or `rediss://` URLs: one, or a cluster's seed nodes.
    pub urls: Vec<String>,
    /// Standalone or cluster.
    pub mode: RedisMode,
    /// The fleet's shared secret: values are sealed under it.
    pub key: FleetKey,
    /// The key being rotated out (`--fleet-previous-key-file`): values
    /// sealed under it still open, and values are sealed under it too, so
    /// replicas still on it read them.
    pub previous_key: Option<FleetKey>,
    /// The key that names keys in Redis (`--fleet-naming-key-file`); the
    /// fleet key when `None`. It stays when the fleet key rotates, so names
    /// (flights, the cache, the rate limit) do not change.
    pub naming_key: Option<FleetKey>,
    /// The budget of one Redis operation within a call.
    pub timeout: Duration,
}

impl FleetConfig {
    /// A standalone store at `url` with `key`, and the defaults.
    pub fn new(url: &str, key: FleetKey) -> Self {
        Self {
            urls: vec![url.to_owned()],
            mode: RedisMode::Standalone,
            key,
            previous_key: None,
            naming_key: None,
            timeout: DEFAULT_REDIS_TIMEOUT,
        }
    }
}

impl fmt::Debug for FleetConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let urls: Vec<String> = self.urls.iter().map(|url| without_password(url)).collect();
        f.debug_struct("FleetConfig")
            .field("urls", &urls)
            .field("mode", &self.mode)
            .field("key", &self.key)
            .field("previous_key", &self.previous_key)
            .field("naming_key", &self.naming_key)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// `url` with whatever sits between `://` and `@` (user and password)
/// replaced by the redaction marker.
pub fn without_password(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!(
            "{}{}{}",
            &url[..scheme + 3],
            crate::base::wire::REDACTED,
            &url[at..]
        ),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_a_password_or_a_key() {
        let config = FleetConfig {
            urls: vec!["rediss://user:hunter2@redis:6379".to_owned()],
            previous_key: Some(FleetKey(b"previous-secret-previous-secret!".to_vec())),
            ..FleetConfig::new("redis://x", FleetKey(vec![1; 32]))
        };
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("@redis:6379"),
            "{shown}"
        );
        assert!(!shown.contains("previous-secret"), "{shown}");
        assert_eq!(without_password("redis://redis:6379"), "redis://redis:6379");
    }
}
