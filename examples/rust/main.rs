//! A Rust (tonic) client of cognito-facade: calls GetUserAuthFactors, prints
//! the user's factors, or prints the error with its `google.rpc` details.
//!
//! `cargo run --example client -- --addr http://127.0.0.1:50051 --token TOKEN`

use clap::Parser;
use cognito_facade::proto::{
    GetUserAuthFactorsRequest, identity_provider_service_client::IdentityProviderServiceClient,
};
use tonic_types::StatusExt as _;

/// Flags.
#[derive(Debug, Parser)]
struct Args {
    /// The service.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// The user's access token.
    #[arg(long)]
    token: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<std::process::ExitCode, Box<dyn std::error::Error>> {
    let args = Args::parse();
    let mut client = IdentityProviderServiceClient::connect(args.addr).await?;

    // The two lines a caller needs: build the request, send it.
    let request = GetUserAuthFactorsRequest {
        access_token: args.token,
    };
    match client.get_user_auth_factors(request).await {
        Ok(response) => {
            let factors = response.get_ref();
            println!("username: {}", factors.username);
            if factors.preferred_mfa_setting.is_some() {
                println!(
                    "preferred MFA: {}",
                    factors.preferred_mfa_setting().as_str_name()
                );
            }
            for mfa in factors.user_mfa_setting_list() {
                println!("MFA: {}", mfa.as_str_name());
            }
            for factor in factors.configured_user_auth_factors() {
                println!("factor: {}", factor.as_str_name());
            }
            Ok(std::process::ExitCode::SUCCESS)
        }
        Err(status) => {
            println!("error: {:?}: {}", status.code(), status.message());
            // Machine-readable details: ErrorInfo always, RetryInfo when worth retrying.
            if let Some(info) = status.get_details_error_info() {
                println!("reason: {}", info.reason);
                let mut metadata: Vec<_> = info.metadata.iter().collect();
                metadata.sort();
                for (key, value) in metadata {
                    println!("  {key}: {value}");
                }
            }
            if let Some(retry) = status.get_details_retry_info() {
                println!("retry after: {:?}", retry.retry_delay.unwrap_or_default());
            }
            Ok(std::process::ExitCode::FAILURE)
        }
    }
}
