//! Who is calling: the caller's identity (a SPIFFE ID, a DNS name or a
//! certificate's CN, from mTLS, a trusted `x-forwarded-client-cert` or
//! Envoy's source principal), its weight (`--caller-weight`), the label it
//! counts under in the metrics, and the flow its calls wait in for turns
//! under the upstream rate limit. The label's values are bounded by the
//! configuration, never by traffic.

use std::{
    collections::HashMap,
    fmt,
    hash::{BuildHasher as _, Hasher as _},
    str::FromStr,
    sync::Arc,
};

/// The identity of a call that names none.
pub(crate) const ANONYMOUS: &str = "anonymous";

/// The label of every identity not named in `--caller-weight`.
pub(crate) const OTHER: &str = "other";

/// The longest identity kept as it is; a longer one counts as `other`.
const MAX_IDENTITY_BYTES: usize = 1024;

/// The largest weight `--caller-weight` accepts.
const MAX_WEIGHT: u32 = 1000;

/// How callers are told apart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallerConfig {
    /// `--caller-weight`.
    pub weights: CallerWeights,
    /// `--trust-forwarded-client-cert`: read the caller from
    /// `x-forwarded-client-cert` (when no client certificate names one).
    pub trust_forwarded_client_cert: bool,
    /// `--admin-callers`: who may call AdminGetUserAuthFactors.
    pub admin: AdminCallers,
}

/// `--admin-callers`: the identities allowed AdminGetUserAuthFactors; none
/// (the default) turns it off.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdminCallers(Vec<Arc<str>>);

impl AdminCallers {
    /// Whether no caller is allowed (the RPC is off).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `caller` is allowed: its identity is named exactly. An
    /// anonymous caller, or one whose identity is not fit to keep, never is.
    pub(crate) fn allow(&self, caller: &Caller) -> bool {
        caller
            .identity
            .as_deref()
            .is_some_and(|identity| self.0.iter().any(|allowed| **allowed == *identity))
    }
}

impl fmt::Display for AdminCallers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

impl FromStr for AdminCallers {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut allowed: Vec<Arc<str>> = Vec::new();
        for name in text.split(',').map(str::trim) {
            if name.is_empty() || !printable(name) || name.len() > MAX_IDENTITY_BYTES {
                return Err(format!(
                    "{name:?}: an identity is 1 to {MAX_IDENTITY_BYTES} printable ASCII characters"
                ));
            }
            if name == ANONYMOUS || name == OTHER {
                return Err(format!(
                    "{name:?} is a label, not an identity: name the caller's SPIFFE ID, DNS name or CN"
                ));
            }
            if allowed.iter().any(|known| **known == *name) {
                return Err(format!("{name:?} is named twice"));
            }
            allowed.push(name.into());
        }
        Ok(Self(allowed))
    }
}

/// `--caller-weight`: the callers named, each with its weight (every other
/// caller has weight 1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallerWeights(Vec<(Arc<str>, u32)>);

impl CallerWeights {
    /// The named identities and their weights, in the order given.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u32)> {
        self.0.iter().map(|(name, weight)| (&**name, *weight))
    }

    /// Whether no caller is named.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for CallerWeights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, (name, weight)) in self.0.iter().enumerate() {
            if n > 0 {
                f.write_str(",")?;
            }
            write!(f, "{name}={weight}")?;
        }
        Ok(())
    }
}

impl FromStr for CallerWeights {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut weights: Vec<(Arc<str>, u32)> = Vec::new();
        for entry in text.split(',') {
            let entry = entry.trim();
            let Some((name, weight)) = entry.rsplit_once('=') else {
                return Err(format!("{entry:?} is not IDENTITY=WEIGHT"));
            };
            let name = name.trim();
            if name.is_empty() || !printable(name) || name.len() > MAX_IDENTITY_BYTES {
                return Err(format!(
                    "{entry:?}: an identity is 1 to {MAX_IDENTITY_BYTES} printable ASCII characters"
                ));
            }
            let weight = match weight.trim().parse::<u32>() {
                Ok(weight @ 1..=MAX_WEIGHT) => weight,
                _ => {
                    return Err(format!(
                        "{entry:?}: a weight is a whole number from 1 to {MAX_WEIGHT}"
                    ));
                }
            };
            if weights.iter().any(|(known, _)| **known == *name) {
                return Err(format!("{name:?} is named twice"));
            }
            weights.push((name.into(), weight));
        }
        Ok(Self(weights))
    }
}

/// Whether `text` is printable ASCII only.
fn printable(text: &str) -> bool {
    text.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// The callers as the configuration names them: what each identity counts
/// as.
#[derive(Debug, Clone)]
pub(crate) struct Callers {
    named: HashMap<Arc<str>, (u16, u32)>,
    hasher: std::hash::RandomState,
}

impl Callers {
    /// The callers of `weights`.
    pub(crate) fn new(weights: &CallerWeights) -> Self {
        let named = weights
            .0
            .iter()
            .enumerate()
            .map(|(n, (name, weight))| {
                let n = u16::try_from(n).unwrap_or(u16::MAX);
                (Arc::clone(name), (n, *weight))
            })
            .collect();
        Self {
            named,
            hasher: std::hash::RandomState::new(),
        }
    }

    /// How many callers are named.
    pub(crate) fn named(&self) -> usize {
        self.named.len()
    }

    /// The caller of `identity` (`None`: the call names none).
    pub(crate) fn caller(&self, identity: Option<&str>) -> Caller {
        let Some(identity) = identity else {
            return Caller::anonymous();
        };
        if identity.len() > MAX_IDENTITY_BYTES || !printable(identity) || identity.is_empty() {
            return Caller {
                identity: None,
                label: Label::Other,
                flow: self.shared(identity.as_bytes()),
            };
        }
        if let Some((name, &(n, weight))) = self.named.get_key_value(identity) {
            return Caller {
                identity: Some(Arc::clone(name)),
                label: Label::Named(Arc::clone(name)),
                flow: Flow::Named { index: n, weight },
            };
        }
        Caller {
            identity: Some(identity.into()),
            label: Label::Other,
            flow: self.shared(identity.as_bytes()),
        }
    }

    /// The caller of a verified certificate that names nobody: `other`, and
    /// never anyone a forwarded header says.
    pub(crate) fn nameless(&self) -> Caller {
        Caller {
            identity: None,
            label: Label::Other,
            flow: self.shared(&[]),
        }
    }

    /// The flow of an identity not named: a keyed hash of it.
    fn shared(&self, identity: &[u8]) -> Flow {
        let mut hasher = self.hasher.build_hasher();
        hasher.write(identity);
        Flow::Other(hasher.finish())
    }
}

/// One call's caller.
#[derive(Clone, PartialEq, Eq)]
pub struct Caller {
    /// The identity, when it is one to log (printable, at most 1 KiB).
    identity: Option<Arc<str>>,
    label: Label,
    flow: Flow,
}

/// The index of the `anonymous` label, after the named ones.
const fn anonymous_slot(named: usize) -> usize {
    named
}

impl fmt::Debug for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.logged())
    }
}

impl Caller {
    /// A call that names no identity.
    pub fn anonymous() -> Self {
        Self {
            identity: None,
            label: Label::Anonymous,
            flow: Flow::Anonymous,
        }
    }

    /// What the call's log line and span name the caller as: its identity,
    /// `anonymous`, or `other` for an identity that is not fit to log.
    pub(crate) fn logged(&self) -> &str {
        match (&self.identity, &self.label) {
            (Some(identity), _) => identity,
            (None, Label::Anonymous) => ANONYMOUS,
            (None, _) => OTHER,
        }
    }

    /// The `caller` label of the metrics.
    pub(crate) fn label(&self) -> &str {
        match &self.label {
            Label::Named(name) => name,
            Label::Anonymous => ANONYMOUS,
            Label::Other => OTHER,
        }
    }

    /// The flow its calls wait in for a turn.
    pub(crate) fn flow(&self) -> Flow {
        self.flow
    }

    /// Its label's place among [`Callers::labels`] of `named` named
    /// callers: the named ones, then `anonymous`, then `other`.
    pub(crate) fn label_slot(&self, named: usize) -> usize {
        match self.flow {
            Flow::Named { index, .. } => usize::from(index),
            Flow::Anonymous => anonymous_slot(named),
            Flow::Other(_) => anonymous_slot(named) + 1,
        }
    }
}

/// What an identity counts as in the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Label {
    Named(Arc<str>),
    Anonymous,
    Other,
}

/// The queue a caller's calls wait in for their turns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Flow {
    /// A caller named in `--caller-weight`: a queue of its own.
    Named {
        /// Its place in `--caller-weight`.
        index: u16,
        /// Its weight.
        weight: u32,
    },
    /// Calls that name no identity: a queue of their own.
    Anonymous,
    /// Any other identity, by a keyed hash of it.
    Other(u64),
}

impl Flow {
    /// Turns it gets in a round, against 1 for a caller not named.
    pub(crate) fn weight(self) -> u32 {
        match self {
            Self::Named { weight, .. } => weight,
            Self::Anonymous | Self::Other(_) => 1,
        }
    }
}

/// Why an `x-forwarded-client-cert` header cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct MalformedXfcc(pub(crate) &'static str);

/// The caller an `x-forwarded-client-cert` header (Envoy's and Istio's
/// format) names: its last element's `URI`, else its `DNS`, else the CN of
/// its `Subject`.
pub(crate) fn forwarded_identity(header: &str) -> Result<String, MalformedXfcc> {
    let elements = split_unquoted(header, ',')?;
    let last = elements.last().ok_or(MalformedXfcc("it is empty"))?;
    let (mut uri, mut dns, mut subject) = (None, None, None);
    for pair in split_unquoted(last, ';')? {
        let (key, value) = pair
            .split_once('=')
            .ok_or(MalformedXfcc("a field is not KEY=VALUE"))?;
        let value = unquote(value)?;
        match key.trim().to_ascii_lowercase().as_str() {
            "uri" => {
                uri.get_or_insert(value);
            }
            "dns" => {
                dns.get_or_insert(value);
            }
            "subject" => subject = Some(value),
            "by" | "hash" | "cert" | "chain" => {}
            _ => return Err(MalformedXfcc("a field's key is not one Envoy sets")),
        }
    }
    let identity = uri
        .or(dns)
        .or_else(|| subject.as_deref().and_then(common_name))
        .ok_or(MalformedXfcc(
            "its last element names no URI, DNS or subject CN",
        ))?;
    if identity.is_empty() {
        return Err(MalformedXfcc("its identity is empty"));
    }
    Ok(identity)
}

/// The CN of an RFC 4514 subject (`CN=api,O=Example`), if it has one.
fn common_name(subject: &str) -> Option<String> {
    let mut parts = Vec::new();
    let mut part = String::new();
    let mut escaped = false;
    for c in subject.chars() {
        match c {
            _ if escaped => {
                part.push(c);
                escaped = false;
            }
            '\\' => escaped = true,
            ',' | '+' => parts.push(std::mem::take(&mut part)),
            _ => part.push(c),
        }
    }
    parts.push(part);
    parts.into_iter().find_map(|part| {
        let (key, value) = part.split_once('=')?;
        key.trim()
            .eq_ignore_ascii_case("cn")
            .then(|| value.trim().to_owned())
    })
}

/// `text` split at each `sep` outside double quotes; a quote left open is
/// malformed.
fn split_unquoted(text: &str, sep: char) -> Result<Vec<&str>, MalformedXfcc> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (at, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            _ if c == sep && !quoted => {
                parts.push(&text[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    if quoted {
        return Err(MalformedXfcc("a quote is not closed"));
    }
    parts.push(&text[start..]);
    if parts.iter().any(|part| part.trim().is_empty()) {
        return Err(MalformedXfcc("an element or field is empty"));
    }
    Ok(parts)
}

/// A field's value, its quotes and escapes removed.
fn unquote(value: &str) -> Result<String, MalformedXfcc> {
    let value = value.trim();
    let Some(inner) = value.strip_prefix('"') else {
        return Ok(value.to_owned());
    };
    let inner = inner
        .strip_suffix('"')
        .ok_or(MalformedXfcc("a value's quotes are not at its ends"))?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(
                chars
                    .next()
                    .ok_or(MalformedXfcc("an escape ends the value"))?,
            ),
            '"' => return Err(MalformedXfcc("a quote inside a quoted value")),
            _ => out.push(c),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_identities_are_read_as_envoy_writes_them() {
        let spiffe = "spiffe://cluster.local/ns/payments/sa/api";
        let header = format!(
            "By=spiffe://cluster.local/ns/facade/sa/facade;Hash=abc;Subject=\"CN=api,O=Example, Inc.\";URI={spiffe}"
        );
        assert_eq!(forwarded_identity(&header).unwrap(), spiffe);
        // The last element is the hop next to the service.
        let two = format!("URI=spiffe://outside/x,{header}");
        assert_eq!(forwarded_identity(&two).unwrap(), spiffe);
        assert_eq!(
            forwarded_identity("Hash=abc;DNS=api.example.com;DNS=other").unwrap(),
            "api.example.com"
        );
        assert_eq!(
            forwarded_identity("Subject=\"O=Example\\, Inc.,CN=batch\"").unwrap(),
            "batch"
        );
    }

    #[test]
    fn malformed_forwarded_headers_are_refused() {
        for bad in [
            "",
            ",",
            "URI=a,",
            "Subject=\"CN=open",
            "Hash=abc",
            "Subject=\"O=x\"",
            "URI",
            "Nonsense=1;URI=a",
            "URI=\"a\"b",
            "URI=",
        ] {
            assert!(forwarded_identity(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn only_the_admin_callers_named_are_allowed() {
        let admin: AdminCallers = "spiffe://cluster.local/ns/support/sa/console, api.risk.svc"
            .parse()
            .unwrap();
        let callers = Callers::new(&CallerWeights::default());
        for (identity, allowed) in [
            (Some("spiffe://cluster.local/ns/support/sa/console"), true),
            (Some("api.risk.svc"), true),
            (Some("api.risk.svc.evil"), false),
            (Some("spiffe://cluster.local/ns/support/sa"), false),
            (Some(""), false),
            (None, false),
        ] {
            assert_eq!(
                admin.allow(&callers.caller(identity)),
                allowed,
                "{identity:?}"
            );
        }
        assert!(!AdminCallers::default().allow(&callers.caller(Some("api.risk.svc"))));
        for bad in ["", "a,,b", "a,a", "anonymous", "other", "caf\u{e9}"] {
            assert!(bad.parse::<AdminCallers>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn weights_parse_and_bad_ones_are_refused() {
        let weights: CallerWeights = "spiffe://c/ns/a/sa/x=3, batch=1".parse().unwrap();
        assert_eq!(weights.to_string(), "spiffe://c/ns/a/sa/x=3,batch=1");
        for bad in [
            "", "a", "a=0", "a=-1", "a=x", "=2", "a=1,a=2", "a=1001", "a\u{7}=1",
        ] {
            assert!(bad.parse::<CallerWeights>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn callers_count_under_bounded_labels() {
        let callers = Callers::new(&"api=4".parse().unwrap());
        let named = callers.caller(Some("api"));
        assert_eq!((named.label(), named.logged()), ("api", "api"));
        assert_eq!(named.flow().weight(), 4);
        let other = callers.caller(Some("spiffe://c/ns/b/sa/y"));
        assert_eq!(
            (other.label(), other.logged()),
            (OTHER, "spiffe://c/ns/b/sa/y")
        );
        assert_eq!(other.flow().weight(), 1);
        let none = callers.caller(None);
        assert_eq!((none.label(), none.logged()), (ANONYMOUS, ANONYMOUS));
        for unfit in ["x".repeat(1025), "new\nline".to_owned(), "é".to_owned()] {
            let caller = callers.caller(Some(&unfit));
            assert_eq!((caller.label(), caller.logged()), (OTHER, OTHER));
            assert!(!format!("{caller:?}").contains(&unfit));
        }
        assert_eq!(
            other.flow(),
            callers.caller(Some("spiffe://c/ns/b/sa/y")).flow()
        );
        assert_ne!(
            other.flow(),
            callers.caller(Some("spiffe://c/ns/b/sa/z")).flow()
        );
    }
}
