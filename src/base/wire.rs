//! What goes over the wire, named once at the bottom of the crate: the service
//! and method names (taken from the generated code where it names them),
//! size limits, response metadata keys, and the redaction marker.
//!
//! Every other module may import from here; this module imports only
//! [`crate::proto`].

use tonic::metadata::AsciiMetadataValue;

use crate::proto::identity_provider_service_server;

/// The fully-qualified name of the RPC service, as tonic generates it (and
/// as health checks and request paths name it).
pub const SERVICE_NAME: &str = identity_provider_service_server::SERVICE_NAME;

/// The token RPC. tonic generates no constant for a method name; a unit
/// test checks the methods named here against the compiled descriptor.
pub(crate) const METHOD: &str = "GetUserAuthFactors";

/// `service/method`, as RPC span names spell it.
pub(crate) const METHOD_PATH: &str = "cognito.idp.v1.IdentityProviderService/GetUserAuthFactors";

/// The RPC by pool and username, for the callers `--admin-callers` names.
pub(crate) const ADMIN_METHOD: &str = "AdminGetUserAuthFactors";

/// `service/method` of [`ADMIN_METHOD`].
pub(crate) const ADMIN_METHOD_PATH: &str =
    "cognito.idp.v1.IdentityProviderService/AdminGetUserAuthFactors";

/// The Cognito operation a call makes. The same AWS error code means
/// different things to each: `NotAuthorizedException` is about the token
/// for one and the user for the other, and only a signed request can have
/// its signature refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// GetUserAuthFactors: unsigned, authorised by the user's access token.
    GetUserAuthFactors,
    /// AdminGetUserAuthFactors: SigV4-signed with the service's own AWS
    /// credentials.
    AdminGetUserAuthFactors,
}

/// Largest request message accepted. A GetUserAuthFactorsRequest holds one
/// token of at most 16 KiB; anything far larger is refused by tonic's
/// decoder before it is buffered.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Largest header block accepted. Room for a 16 KiB `authorization: Bearer`
/// token plus ordinary metadata; hyper's default (16 KiB) would refuse the
/// largest valid token.
pub(crate) const MAX_HEADER_LIST_BYTES: u32 = 64 * 1024;

/// Most concurrent streams (calls) per HTTP/2 connection; a client that
/// opens more gets REFUSED_STREAM for the excess and retries them. Each open
/// stream holds a few KiB of state before its body's first byte (its HTTP/2
/// and hyper state, its task, the service's future), which this bounds per
/// connection: Go's HTTP/2 server allows 250, hyper's 200, nginx's 128.
pub(crate) const MAX_CONCURRENT_STREAMS: u32 = 256;

/// Response metadata that carries Cognito's request id.
pub(crate) const REQUEST_ID_METADATA: &str = "x-amzn-requestid";

/// Response metadata that gives a stale answer's age, in whole seconds
/// since Cognito gave it (RFC 5861 asks stale answers to be visibly stale).
pub(crate) const AGE_METADATA: &str = "x-cognito-facade-age-seconds";

/// Response metadata that says where the answer came from (see
/// [`Source`]).
pub(crate) const SOURCE_METADATA: &str = "x-cognito-facade-source";

/// What `Debug`, `Display` and logs print in place of a secret (defined
/// beside the generated messages whose `Debug` uses it).
pub(crate) use crate::proto::REDACTED;

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    /// The methods named here are the ones `proto/` defines, in the service
    /// tonic generated.
    #[test]
    fn the_method_is_the_one_the_contract_defines() {
        let set = prost_types::FileDescriptorSet::decode(crate::proto::FILE_DESCRIPTOR_SET)
            .expect("the compiled descriptor set");
        let methods: Vec<(String, String)> = set
            .file
            .iter()
            .flat_map(|file| {
                let package = file.package().to_owned();
                file.service.iter().flat_map(move |service| {
                    let service_name = format!("{package}.{}", service.name());
                    service
                        .method
                        .iter()
                        .map(move |method| (service_name.clone(), method.name().to_owned()))
                })
            })
            .collect();
        assert_eq!(
            methods,
            [METHOD, ADMIN_METHOD].map(|method| (SERVICE_NAME.to_owned(), method.to_owned()))
        );
        assert_eq!(METHOD_PATH, format!("{SERVICE_NAME}/{METHOD}"));
        assert_eq!(ADMIN_METHOD_PATH, format!("{SERVICE_NAME}/{ADMIN_METHOD}"));
    }
}

/// Where a call's answer came from; logged as `source`, labelled as
/// `source`, and sent to the caller as the `x-cognito-facade-source` response
/// metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// This call's own request to Cognito.
    Cognito,
    /// Another concurrent call's request to Cognito (single flight).
    Coalesced,
    /// The answer cache.
    Cache,
    /// The facade itself, without Cognito: a refused request, a shed call.
    Local,
    /// The fleet's cache on Redis (another replica's answer).
    FleetCache,
    /// Another replica's request to Cognito (fleet single flight).
    FleetCoalesced,
    /// This replica's memory of Cognito's definitive refusal of the token.
    Memory,
    /// The fleet's memory of such a refusal, on Redis.
    FleetMemory,
    /// A kept answer, served while Cognito is unavailable
    /// (`--stale-if-error`).
    Stale,
}

impl Source {
    /// Every source.
    pub(crate) const ALL: [Self; 9] = [
        Self::Cognito,
        Self::Coalesced,
        Self::Cache,
        Self::Local,
        Self::FleetCache,
        Self::FleetCoalesced,
        Self::Memory,
        Self::FleetMemory,
        Self::Stale,
    ];

    /// The name in logs, labels and metadata.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::Cognito => "cognito",
            Self::Coalesced => "coalesced",
            Self::Cache => "cache",
            Self::Local => "local",
            Self::FleetCache => "fleet_cache",
            Self::FleetCoalesced => "fleet_coalesced",
            Self::Memory => "memory",
            Self::FleetMemory => "fleet_memory",
            Self::Stale => "stale",
        }
    }

    /// The metadata value that carries this source.
    pub(crate) fn metadata_value(self) -> AsciiMetadataValue {
        AsciiMetadataValue::from_static(self.as_str())
    }
}
