//! Nothing readable in Redis: key names are HMACs under the naming key, and
//! values are sealed with AES-256-GCM-SIV (nonce-misuse resistant: a repeated
//! random nonce leaks only whether two plaintexts are equal, never the key
//! stream) under keys derived (HKDF) from the fleet key, with the format,
//! the key's id and the key name as associated data.
//!
//! During a rotation (`--fleet-previous-key-file`) a value is sealed under
//! both keys, one part each, so a replica on either key opens it; a replica
//! opens the part whose key id it knows.

use aws_lc_rs::{
    aead::{AES_256_GCM_SIV, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey},
    hkdf, hmac,
    rand::{SecureRandom as _, SystemRandom},
};

use super::config::{FleetConfig, FleetKey};

/// The format byte of sealed values: anything else is a miss.
const SEALED_FORMAT: u8 = 2;
/// A key's id: the first bytes of an HKDF output of the key.
const KEY_ID_LEN: usize = 4;
/// One part: key id, nonce, ciphertext length (u32), ciphertext and tag.
const PART_HEADER: usize = KEY_ID_LEN + NONCE_LEN + 4;

/// What a key name's tag is computed over: a token, or a label of the
/// fleet's own (a rate limit, the replica set), never confusable.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Domain {
    Token,
    /// A user named by pool and username (AdminGetUserAuthFactors).
    User,
    Label,
}

/// One sealing key and its id.
struct SealKey {
    id: [u8; KEY_ID_LEN],
    aead: LessSafeKey,
}

/// The fleet's keys: one to name, one or two to seal and open.
pub(crate) struct Keyring {
    naming: hmac::Key,
    current: SealKey,
    previous: Option<SealKey>,
    random: SystemRandom,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("rotating", &self.previous.is_some())
            .finish_non_exhaustive()
    }
}

/// 32 bytes of HKDF-SHA256 output of `key` for `info`.
fn derive(key: &FleetKey, info: &'static [u8]) -> [u8; 32] {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"cognito-facade fleet v2").extract(&key.0);
    let mut out = [0u8; 32];
    prk.expand(&[info], hkdf::HKDF_SHA256)
        .and_then(|okm| okm.fill(&mut out))
        .expect("32 bytes is a valid HKDF-SHA256 length");
    out
}

impl SealKey {
    fn derive(key: &FleetKey) -> Self {
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&derive(key, b"key id")[..KEY_ID_LEN]);
        let aead = UnboundKey::new(&AES_256_GCM_SIV, &derive(key, b"values"))
            .map(LessSafeKey::new)
            .expect("32 bytes is an AES-256 key");
        Self { id, aead }
    }

    /// The associated data: the format, this key's id and the key name.
    fn aad(&self, name: &str) -> Vec<u8> {
        let mut aad = Vec::with_capacity(1 + KEY_ID_LEN + name.len());
        aad.push(SEALED_FORMAT);
        aad.extend_from_slice(&self.id);
        aad.extend_from_slice(name.as_bytes());
        aad
    }
}

impl Keyring {
    pub(crate) fn new(config: &FleetConfig) -> Self {
        let naming = config.naming_key.as_ref().unwrap_or(&config.key);
        Self {
            naming: hmac::Key::new(hmac::HMAC_SHA256, &derive(naming, b"key names")),
            current: SealKey::derive(&config.key),
            previous: config.previous_key.as_ref().map(SealKey::derive),
            random: SystemRandom::new(),
        }
    }

    /// A key name's hash tag for `what` in `domain`, unreadable without the
    /// naming key (hex).
    pub(crate) fn tag(&self, domain: Domain, what: &[u8]) -> String {
        let mut context = hmac::Context::with_key(&self.naming);
        context.update(match domain {
            Domain::Token => b"token\0",
            Domain::User => b"user\0",
            Domain::Label => b"label\0",
        });
        context.update(what);
        hex(context.sign().as_ref())
    }

    /// `plain` sealed under the key name `name`: one part under the fleet
    /// key, and one under the previous key during a rotation.
    pub(crate) fn seal(&self, name: &str, plain: &[u8]) -> Option<Vec<u8>> {
        let keys = std::iter::once(&self.current).chain(&self.previous);
        let mut out = vec![SEALED_FORMAT, 0];
        for key in keys {
            let mut nonce = [0u8; NONCE_LEN];
            self.random.fill(&mut nonce).ok()?;
            let mut sealed = plain.to_vec();
            key.aead
                .seal_in_place_append_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(key.aad(name)),
                    &mut sealed,
                )
                .ok()?;
            out.extend_from_slice(&key.id);
            out.extend_from_slice(&nonce);
            out.extend_from_slice(&u32::try_from(sealed.len()).ok()?.to_be_bytes());
            out.extend_from_slice(&sealed);
            out[1] += 1;
        }
        Some(out)
    }

    /// The plaintext of a value sealed under `name`, or `None` (tampered,
    /// another fleet's keys, moved from another key, another format).
    pub(crate) fn open(&self, name: &str, sealed: &[u8]) -> Option<Vec<u8>> {
        let [format, parts, rest @ ..] = sealed else {
            return None;
        };
        let mut rest: &[u8] = rest;
        if *format != SEALED_FORMAT {
            return None;
        }
        for _ in 0..*parts {
            let (header, after) = rest.split_at_checked(PART_HEADER)?;
            let (id, header) = header.split_at(KEY_ID_LEN);
            let (nonce, len) = header.split_at(NONCE_LEN);
            let len = usize::try_from(u32::from_be_bytes(len.try_into().ok()?)).ok()?;
            let (ciphertext, after) = after.split_at_checked(len)?;
            rest = after;
            let key = std::iter::once(&self.current)
                .chain(&self.previous)
                .find(|key| key.id == id);
            let Some(key) = key else { continue };
            let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
            let mut buffer = ciphertext.to_vec();
            let plain = key
                .aead
                .open_in_place(nonce, Aad::from(key.aad(name)), &mut buffer)
                .ok()?;
            return Some(plain.to_vec());
        }
        None
    }
}

/// Lower-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(key: u8, previous: Option<u8>, naming: Option<u8>) -> FleetConfig {
        FleetConfig {
            previous_key: previous.map(|b| FleetKey(vec![b; 32])),
            naming_key: naming.map(|b| FleetKey(vec![b; 32])),
            ..FleetConfig::new("redis://x", FleetKey(vec![key; 32]))
        }
    }

    fn ring(key: u8, previous: Option<u8>, naming: Option<u8>) -> Keyring {
        Keyring::new(&config(key, previous, naming))
    }

    #[test]
    fn a_sealed_value_opens_only_under_its_own_name_and_fleet_key() {
        let keys = ring(7, None, None);
        let sealed = keys.seal("name", b"plain").unwrap();
        assert_eq!(keys.open("name", &sealed).as_deref(), Some(&b"plain"[..]));
        assert_eq!(keys.open("other", &sealed), None, "moved");
        assert_eq!(
            ring(8, None, None).open("name", &sealed),
            None,
            "another fleet"
        );
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(keys.open("name", &tampered), None, "tampered");
        let mut other_format = sealed.clone();
        other_format[0] = 1;
        assert_eq!(keys.open("name", &other_format), None, "another format");
        let mut other_id = sealed;
        other_id[2] ^= 1;
        assert_eq!(keys.open("name", &other_id), None, "another key id");
        assert_eq!(keys.open("name", &[2, 9, 1]), None, "truncated");
    }

    #[test]
    fn during_a_rotation_both_sides_open_each_others_values() {
        let old = ring(1, None, None);
        let rotating = ring(2, Some(1), Some(1));
        let new = ring(2, None, Some(1));
        let from_rotating = rotating.seal("n", b"v").unwrap();
        assert_eq!(old.open("n", &from_rotating).as_deref(), Some(&b"v"[..]));
        assert_eq!(new.open("n", &from_rotating).as_deref(), Some(&b"v"[..]));
        let from_old = old.seal("n", b"o").unwrap();
        assert_eq!(rotating.open("n", &from_old).as_deref(), Some(&b"o"[..]));
        let from_new = new.seal("n", b"w").unwrap();
        assert_eq!(rotating.open("n", &from_new).as_deref(), Some(&b"w"[..]));
        assert_eq!(
            old.open("n", &from_new),
            None,
            "the old key cannot open the new"
        );
    }

    #[test]
    fn names_stay_with_the_naming_key_and_domains_never_collide() {
        let token = b"eyJ.token.sig";
        let old = ring(1, None, None);
        let new = ring(2, None, Some(1));
        assert_eq!(old.tag(Domain::Token, token), new.tag(Domain::Token, token));
        assert_ne!(
            old.tag(Domain::Token, token),
            ring(2, None, None).tag(Domain::Token, token)
        );
        assert_ne!(old.tag(Domain::Token, b"x"), old.tag(Domain::Label, b"x"));
        assert_ne!(old.tag(Domain::Token, b"x"), old.tag(Domain::User, b"x"));
        assert_eq!(old.tag(Domain::Token, token).len(), 64);
    }
}
