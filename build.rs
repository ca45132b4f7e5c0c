//! Compiles `proto/` into Rust with tonic-prost-build.
//!
//! The descriptors come from protox, a pure-Rust protobuf compiler, so a fresh
//! machine needs no `protoc`. The same descriptor set (with source info, so
//! comments reach `grpcurl describe`) is written to `OUT_DIR` for reflection.

use std::{env, error::Error, fs, path::PathBuf};

use prost::Message as _;

const PROTO_ROOT: &str = "proto";
const SENSITIVE_MESSAGES: &[&str] = &[
    "cognito.idp.v1.GetUserAuthFactorsRequest",
    "cognito.idp.v1.GetUserAuthFactorsResponse",
    "cognito.idp.v1.AdminGetUserAuthFactorsRequest",
    "cognito.idp.v1.AdminGetUserAuthFactorsResponse",
];
const PROTO_FILES: &[&str] = &["cognito/idp/v1/identity_provider.proto"];
/// Envoy's ext_authz API, for reflection only (its Rust types come from the
/// envoy-types crate): the protos it needs, as published upstream.
const ENVOY_ROOT: &str = "third_party/envoy-api";
const ENVOY_INCLUDES: &[&str] = &["data-plane-api", "googleapis", "protoc-gen-validate", "xds"];
const ENVOY_FILES: &[&str] = &["envoy/service/auth/v3/external_auth.proto"];

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    println!("cargo:rerun-if-changed={ENVOY_ROOT}");
    let descriptors = protox::compile(PROTO_FILES, [PROTO_ROOT])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("cognito_idp_v1_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    let envoy_includes = ENVOY_INCLUDES
        .iter()
        .map(|dir| PathBuf::from(ENVOY_ROOT).join(dir));
    let mut envoy = protox::compile(ENVOY_FILES, envoy_includes)?;
    // Reflection needs the types, not Envoy's comments.
    for file in &mut envoy.file {
        file.source_code_info = None;
    }
    fs::write(
        out_dir.join("envoy_ext_authz_descriptor.bin"),
        envoy.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        // These messages hold an access token or a username: src/proto.rs gives
        // them a `Debug` that redacts both, so no log line can print them.
        .skip_debug(SENSITIVE_MESSAGES)
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
