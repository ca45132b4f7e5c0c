//! Optional TLS and mutual TLS on the gRPC listener: PEM files read and
//! checked at start-up, so a bad certificate stops the process before it binds.

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
    server::WebPkiClientVerifier,
};
use tokio_rustls::TlsAcceptor;

/// The ALPN protocol id of HTTP/2, the only protocol served.
const ALPN_H2: &[u8] = b"h2";

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
            .field("key_pem", &crate::base::wire::REDACTED)
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
        config.acceptor()?;
        Ok(config)
    }

    /// The TLS acceptor, built once at start-up, which parses every PEM
    /// block, so a bad file fails there rather than on the first connection.
    /// With a client CA, a client certificate that chains to it is required.
    /// ALPN offers `h2`, as gRPC clients expect.
    pub fn acceptor(&self) -> Result<TlsAcceptor, TlsError> {
        let invalid =
            |what: &str, err: &dyn std::fmt::Display| TlsError::Invalid(format!("{what}: {err}"));
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|err| invalid("protocol versions", &err))?;
        let builder = match &self.client_ca_pem {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(ca) {
                    let cert = cert.map_err(|err| invalid("--tls-client-ca", &err))?;
                    roots
                        .add(cert)
                        .map_err(|err| invalid("--tls-client-ca", &err))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|err| invalid("--tls-client-ca", &err))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let chain = CertificateDer::pem_slice_iter(&self.cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| invalid("--tls-cert", &err))?;
        if chain.is_empty() {
            return Err(TlsError::Invalid("--tls-cert: no certificate".to_owned()));
        }
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem)
            .map_err(|err| invalid("--tls-key", &err))?;
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|err| invalid("--tls-cert and --tls-key", &err))?;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

/// A connection's client certificate, as the caller it names. A certificate
/// always wins over a forwarded header, even one that names nobody: otherwise
/// a client with any certificate the CA signed could name itself in
/// `x-forwarded-client-cert`.
#[derive(Debug, Clone)]
pub(crate) enum Peer {
    /// No certificate: plaintext, or TLS without client authentication.
    Uncertified,
    /// A verified certificate and the identity it names.
    Named(Arc<str>),
    /// A verified certificate with no URI or DNS SAN and no readable CN.
    Nameless,
}

impl Peer {
    /// The caller a verified leaf certificate (`der`) names, or none.
    pub(crate) fn of(der: &[u8]) -> Self {
        peer_identity(der).map_or(Self::Nameless, |identity| Self::Named(Arc::from(identity)))
    }
}

/// The caller a verified client certificate (`der`) names: its first URI
/// SAN (a SPIFFE ID), else its first DNS SAN, else its subject's CN.
fn peer_identity(der: &[u8]) -> Option<String> {
    use x509_parser::{extensions::GeneralName, prelude::FromDer as _};
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    let names = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| san.value.general_names.as_slice())
        .unwrap_or_default();
    let uri = names.iter().find_map(|name| match name {
        GeneralName::URI(uri) => Some(*uri),
        _ => None,
    });
    let dns = || {
        names.iter().find_map(|name| match name {
            GeneralName::DNSName(dns) => Some(*dns),
            _ => None,
        })
    };
    if let Some(name) = uri.or_else(dns) {
        return Some(name.to_owned());
    }
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}
