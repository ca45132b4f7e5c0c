//! Optional TLS and mutual TLS on the gRPC listener: PEM files read and
//! checked at start-up, so a bad certificate stops the process before it binds.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

/// Why the TLS files cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {flag} {path}: {source}")]
    Read {
        /// The flag that named it.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The files were read but do not make a usable TLS configuration.
    #[error("unusable TLS files (--tls-cert, --tls-key, --tls-client-ca): {0}")]
    Invalid(String),
}

/// The PEM contents of the TLS files. `Debug` never prints the key.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// The server's certificate chain.
    pub cert_pem: Vec<u8>,
    /// The server's private key.
    pub key_pem: Vec<u8>,
    /// The CA bundle client certificates must chain to; `None` means no client
    /// certificate is asked for.
    pub client_ca_pem: Option<Vec<u8>>,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &crate::wire::REDACTED)
            .field("mutual", &self.client_ca_pem.is_some())
            .finish()
    }
}

impl TlsConfig {
    /// Reads and checks the files named by the flags.
    pub fn from_files(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<Self, TlsError> {
        let read = |flag: &'static str, path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                flag,
                path: path.to_owned(),
                source,
            })
        };
        let config = Self {
            cert_pem: read("--tls-cert", cert)?,
            key_pem: read("--tls-key", key)?,
            client_ca_pem: client_ca
                .map(|ca| read("--tls-client-ca", ca))
                .transpose()?,
        };
        config.check()?;
        Ok(config)
    }

    /// Builds the TLS acceptor once, which parses every PEM block, so a bad
    /// file fails here rather than on the first connection.
    pub fn check(&self) -> Result<(), TlsError> {
        Server::builder()
            .tls_config(self.server_config())
            .map(drop)
            .map_err(|err| TlsError::Invalid(crate::error::ErrorChain(&err).to_string()))
    }

    /// The tonic configuration. With a client CA, a client certificate that
    /// chains to it is required.
    pub fn server_config(&self) -> ServerTlsConfig {
        let config =
            ServerTlsConfig::new().identity(Identity::from_pem(&self.cert_pem, &self.key_pem));
        match &self.client_ca_pem {
            Some(ca) => config.client_ca_root(Certificate::from_pem(ca)),
            None => config,
        }
    }
}
