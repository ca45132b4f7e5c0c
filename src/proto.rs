//! Code generated from `proto/` at build time (nothing generated is committed),
//! plus the redacting `Debug` of the messages that carry secrets.

#![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]

use std::fmt;

tonic::include_proto!("cognito.idp.v1");

/// The encoded descriptor set of Envoy's ext_authz API
/// (`envoy.service.auth.v3`, from `third_party/envoy-api/`), for server
/// reflection.
pub const ENVOY_EXT_AUTHZ_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/envoy_ext_authz_descriptor.bin"));

/// The encoded descriptor set of `proto/`, with comments, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/cognito_idp_v1_descriptor.bin"));

/// What `Debug` prints in place of a secret.
pub const REDACTED: &str = "[REDACTED]";

impl fmt::Debug for GetUserAuthFactorsRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GetUserAuthFactorsRequest")
            .field("access_token", &REDACTED)
            .finish()
    }
}

impl fmt::Debug for AdminGetUserAuthFactorsRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminGetUserAuthFactorsRequest")
            .field("user_pool_id", &self.user_pool_id)
            .field("username", &REDACTED)
            .finish()
    }
}

/// The `Debug` of a response: the username redacted, the rest as it is.
macro_rules! redacted_response_debug {
    ($($message:ident),*) => {$(
        impl fmt::Debug for $message {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($message))
                    .field("username", &REDACTED)
                    .field(
                        "preferred_mfa_setting",
                        &self
                            .preferred_mfa_setting
                            .map(|_| self.preferred_mfa_setting()),
                    )
                    .field(
                        "user_mfa_setting_list",
                        &self.user_mfa_setting_list().collect::<Vec<_>>(),
                    )
                    .field(
                        "configured_user_auth_factors",
                        &self.configured_user_auth_factors().collect::<Vec<_>>(),
                    )
                    .finish()
            }
        }
    )*};
}

redacted_response_debug!(GetUserAuthFactorsResponse, AdminGetUserAuthFactorsResponse);

impl From<GetUserAuthFactorsResponse> for AdminGetUserAuthFactorsResponse {
    /// The same user's answer, as AdminGetUserAuthFactors returns it.
    fn from(user: GetUserAuthFactorsResponse) -> Self {
        Self {
            username: user.username,
            preferred_mfa_setting: user.preferred_mfa_setting,
            user_mfa_setting_list: user.user_mfa_setting_list,
            configured_user_auth_factors: user.configured_user_auth_factors,
        }
    }
}
