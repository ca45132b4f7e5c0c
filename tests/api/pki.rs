//! Certificates made at test time for mutual TLS: a CA, leaves with the
//! SANs a test names, the server's files, and a client channel that
//! presents a leaf.

use std::{net::SocketAddr, path::PathBuf};

use rcgen::{CertificateParams, CertifiedIssuer, DistinguishedName, DnType, KeyPair, SanType};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// A CA made now.
pub(crate) struct Pki {
    pub(crate) ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    pub(crate) fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        Self {
            ca: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    /// A leaf with `sans` and subject CN `cn`: its PEM and key.
    pub(crate) fn leaf(&self, sans: Vec<SanType>, cn: &str) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = sans;
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &self.ca).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A client leaf that names nobody: no SAN, and a subject without a CN.
    pub(crate) fn nameless(&self) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "payments");
        let cert = params.signed_by(&key, &self.ca).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A client leaf whose URI SAN is `uri` (a SPIFFE ID).
    pub(crate) fn client(&self, uri: &str) -> (String, String) {
        self.leaf(vec![SanType::URI(uri.try_into().unwrap())], "client")
    }

    /// The server's certificate (for `localhost` and 127.0.0.1), its key and
    /// the CA, written into a directory of their own named after `name`: the
    /// arguments that serve mutual TLS with them.
    pub(crate) fn server_args(&self, name: &str) -> (PathBuf, Vec<String>) {
        let dir =
            std::env::temp_dir().join(format!("cognito-facade-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let server = self.leaf(
            vec![
                SanType::DnsName("localhost".try_into().unwrap()),
                SanType::IpAddress([127, 0, 0, 1].into()),
            ],
            "facade",
        );
        let write = |file: &str, text: &str| {
            let path = dir.join(file);
            std::fs::write(&path, text).unwrap();
            path.to_str().unwrap().to_owned()
        };
        let args = vec![
            "--tls-cert".to_owned(),
            write("server.pem", &server.0),
            "--tls-key".to_owned(),
            write("server.key", &server.1),
            "--tls-client-ca".to_owned(),
            write("ca.pem", &self.ca.pem()),
        ];
        (dir, args)
    }
}

/// A mutual-TLS channel to `addr` with the client certificate `client`.
pub(crate) async fn mtls(addr: SocketAddr, pki: &Pki, client: &(String, String)) -> Channel {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(pki.ca.pem()))
        .domain_name("localhost")
        .identity(Identity::from_pem(&client.0, &client.1));
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap()
}
