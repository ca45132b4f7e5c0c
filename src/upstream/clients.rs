//! The Cognito clients and what they share: the SDK's settings (timeouts,
//! retries, the region), no credentials for the unsigned operation, and for
//! AdminGetUserAuthFactors the default credential chain under a bound of its
//! own; the HTTPS client the rate limit's pacing wraps.

use aws_credential_types::provider::{
    ProvideCredentials, SharedCredentialsProvider, error::CredentialsError, future,
};

use super::*;

/// What makes the regional clients: `config`'s endpoints, and with a
/// `pacer` (a rate limit), the SDK's HTTPS client (`inner`) wrapped so that
/// each attempt takes its turn.
pub(super) struct Clients<'a> {
    pub(super) config: &'a UpstreamConfig,
    pub(super) inner: Option<SharedHttpClient>,
    pub(super) pacer: Option<Arc<dyn AttemptPacer>>,
}

impl Clients<'_> {
    /// The client of `region`, with `shared`'s settings.
    pub(super) fn client(&self, shared: &aws_config::SdkConfig, region: &str) -> RegionalClient {
        let region_name: Arc<str> = region.into();
        let mut builder = aws_sdk_cognitoidentityprovider::config::Builder::from(shared)
            .region(Region::new(region.to_owned()))
            .interceptor(Attempts {
                region: Arc::clone(&region_name),
                pacer: self.pacer.clone(),
            });
        if let Some(endpoint) = self.config.endpoint_for(region) {
            builder = builder.endpoint_url(endpoint);
        }
        if let (Some(pacer), Some(inner)) = (&self.pacer, &self.inner) {
            builder = builder.http_client(PacedClient {
                inner: inner.clone(),
                region: Arc::clone(&region_name),
                pacer: Arc::clone(pacer),
            });
        }
        RegionalClient {
            region: region_name,
            client: Client::from_conf(builder.build()),
        }
    }

    /// A client of each of `regions`, by region.
    pub(super) fn each(
        &self,
        shared: &aws_config::SdkConfig,
        regions: &BTreeSet<String>,
    ) -> HashMap<String, RegionalClient> {
        regions
            .iter()
            .map(|region| (region.clone(), self.client(shared, region)))
            .collect()
    }
}

/// The settings every regional client shares: `config`'s timeouts and
/// standard retries, `region` (so that loading them asks no region provider:
/// the default one would try IMDS), and no credentials (GetUserAuthFactors
/// is `noAuth`) or, when `signed`, the default credential chain
/// (environment, profile, web identity, EKS Pod Identity, ECS, IMDS) under
/// [`BoundedCredentials`], whose own calls go to `region`. The chain loads
/// nothing until a call signs.
pub(super) async fn sdk_config(
    config: &UpstreamConfig,
    region: Region,
    signed: bool,
) -> aws_config::SdkConfig {
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(config.connect_timeout)
        .operation_attempt_timeout(config.attempt_timeout)
        .operation_timeout(config.call_timeout)
        .build();
    let loader = aws_config::defaults(BehaviorVersion::latest()).region(region);
    let loader = if signed {
        loader
    } else {
        loader.no_credentials()
    };
    let shared = loader
        .timeout_config(timeouts)
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(config.max_attempts)
                .with_initial_backoff(config.retry_backoff),
        )
        .load()
        .await;
    match shared.credentials_provider() {
        Some(chain) if signed => {
            let bounded = BoundedCredentials::new(chain, credentials_bound(config.attempt_timeout));
            shared
                .into_builder()
                .credentials_provider(SharedCredentialsProvider::new(bounded))
                .build()
        }
        _ => shared,
    }
}

/// The longest the credential chain may take to give a signed call its
/// credentials (the SDK's identity cache keeps them, so this is the first
/// call's, and a refresh's, cost).
pub(super) const CREDENTIALS_TIMEOUT: Duration = Duration::from_secs(1);

/// The bound on loading credentials for an attempt of `attempt_timeout`:
/// [`CREDENTIALS_TIMEOUT`], but at most half the attempt, so that a source
/// that hangs is named as the credentials' fault before the attempt's own
/// timeout names it Cognito's.
pub(super) fn credentials_bound(attempt_timeout: Duration) -> Duration {
    CREDENTIALS_TIMEOUT.min(attempt_timeout / 2)
}

/// The default credential chain with a bound of its own: a source that does
/// not answer in time (IMDS, a container endpoint, STS) fails the call as
/// `CREDENTIALS_SOURCE_FAILED`, not as Cognito's timeout. The load itself
/// goes on in the background, and the next call takes its outcome (or waits
/// for it, within its own bound) rather than starting again, so a source
/// slower than the bound still gives credentials, one call later.
#[derive(Debug)]
pub(super) struct BoundedCredentials {
    chain: SharedCredentialsProvider,
    bound: Duration,
    /// The load in flight, if one outlived its caller's bound.
    loading: tokio::sync::Mutex<Option<Load>>,
}

/// A load of the chain, in a task of its own.
type Load = tokio::task::JoinHandle<aws_credential_types::provider::Result>;

impl BoundedCredentials {
    fn new(chain: SharedCredentialsProvider, bound: Duration) -> Self {
        Self {
            chain,
            bound,
            loading: tokio::sync::Mutex::new(None),
        }
    }

    /// The outcome of the load in flight, or of a new one.
    async fn load(&self) -> aws_credential_types::provider::Result {
        let mut loading = self.loading.lock().await;
        let load = loading.get_or_insert_with(|| {
            let chain = self.chain.clone();
            tokio::spawn(async move { chain.provide_credentials().await })
        });
        let outcome = load.await;
        // Landed: the next call starts afresh (the SDK's identity cache
        // keeps what succeeded).
        *loading = None;
        outcome.unwrap_or_else(|panicked| Err(CredentialsError::unhandled(panicked)))
    }
}

impl ProvideCredentials for BoundedCredentials {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(async move {
            // Past the bound the wait is dropped, not the load: it stays in
            // `loading` for the next call.
            tokio::time::timeout(self.bound, self.load())
                .await
                .unwrap_or_else(|_| Err(CredentialsError::provider_timed_out(self.bound)))
        })
    }
}

/// The SDK's HTTPS client as the SDK builds it by default for this
/// behaviour version (rustls on aws-lc, the proxy from `HTTPS_PROXY` and
/// `NO_PROXY`), for [`PacedClient`] to wrap: the same steps as
/// `aws_smithy_runtime::client::http::default_https_client`, which is not
/// public.
pub(super) fn https_client() -> SharedHttpClient {
    use aws_smithy_http_client::{
        ConnectorBuilder,
        proxy::ProxyConfig,
        tls::{Provider, rustls_provider::CryptoMode},
    };
    aws_smithy_http_client::Builder::new().build_with_connector_fn(|settings, components| {
        let mut connector =
            ConnectorBuilder::default().tls_provider(Provider::Rustls(CryptoMode::AwsLc));
        connector.set_connector_settings(settings.cloned());
        if let Some(components) = components {
            connector.set_sleep_impl(components.sleep_impl());
        }
        connector.set_proxy_config(Some(ProxyConfig::from_env()));
        connector.build()
    })
}
