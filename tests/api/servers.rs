//! The Redis-compatible servers the fleet's tests run against: one on a
//! free loopback port (standalone, with a password behind TLS, or a node of
//! a cluster), started from `crate::store_server`'s programs, killed and
//! its directory removed when dropped; and the fleet's key files.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{helpers::KilledOnDrop, store_server::store_server};

/// A `redis-server` (or `valkey-server`) on a free loopback port, killed
/// when dropped, its directory removed.
pub(crate) struct Redis {
    process: Option<KilledOnDrop>,
    pub(crate) port: u16,
    pub(crate) dir: PathBuf,
    extra: Vec<String>,
    /// `redis-cli`'s own flags for this server (TLS, password).
    cli_flags: Vec<String>,
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "cognito-facade-{name}-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Redis {
    pub(crate) fn start(extra: &[&str]) -> Self {
        let mut redis = Self {
            process: None,
            port: free_port(),
            dir: scratch_dir("redis"),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            cli_flags: Vec::new(),
        };
        // A server that exits at once most likely lost its port to another
        // test between `free_port` and its bind: another port, a few times.
        for _ in 0..4 {
            if redis.try_run() {
                return redis;
            }
            redis.port = free_port();
        }
        redis.run();
        redis
    }

    /// A server with a password behind TLS, its certificate from a test CA:
    /// its own TLS port if it was built with TLS, else (Valkey from PyPI) a
    /// TLS terminator written here in front of its plain port. Returns the
    /// server, the CA's PEM and the port to reach it over TLS.
    pub(crate) fn start_tls(password: &str) -> (Self, PathBuf, u16) {
        let dir = scratch_dir("redis-tls");
        let (ca_pem, cert_pem, key_pem) = test_certificates(&dir);
        let port = free_port();
        let auth = ["-a", password, "--no-auth-warning"].map(str::to_owned);
        let mut redis = Self {
            process: None,
            port,
            dir,
            extra: [
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--tls-cert-file",
                cert_pem.to_str().unwrap(),
                "--tls-key-file",
                key_pem.to_str().unwrap(),
                "--tls-ca-cert-file",
                ca_pem.to_str().unwrap(),
                "--tls-auth-clients",
                "no",
                "--requirepass",
                password,
            ]
            .map(str::to_owned)
            .to_vec(),
            cli_flags: ["--tls", "--cacert", ca_pem.to_str().unwrap()]
                .map(str::to_owned)
                .into_iter()
                .chain(auth.clone())
                .collect(),
        };
        if redis.try_run() {
            eprintln!("TLS: the server's own TLS port");
            return (redis, ca_pem, port);
        }
        eprintln!(
            "TLS: {:?} has none; a TLS terminator in front of it",
            store_server().server
        );
        redis.extra = ["--requirepass", password].map(str::to_owned).to_vec();
        redis.cli_flags = auth.to_vec();
        redis.run();
        let tls_port = tls_terminator(&cert_pem, &key_pem, redis.port);
        (redis, ca_pem, tls_port)
    }

    /// Starts (or restarts) the server on its port.
    pub(crate) fn run(&mut self) {
        assert!(self.try_run(), "{:?} did not start", store_server().server);
    }

    /// Starts the server; whether it answers (it may exit at once, as one
    /// built without TLS does when given a TLS port).
    fn try_run(&mut self) -> bool {
        let child = Command::new(&store_server().server)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut child = KilledOnDrop(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.cli(&["PING"]).trim() != "PONG" {
            if child.0.try_wait().unwrap().is_some() {
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "{:?} did not start",
                store_server().server
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.process = Some(child);
        true
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `redis-cli` (or `valkey-cli`) against this server; its stdout.
    pub(crate) fn cli(&self, args: &[&str]) -> String {
        let output = Command::new(&store_server().cli)
            .args(["-p", &self.port.to_string()])
            .args(&self.cli_flags)
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    pub(crate) fn signal(&self, signal: &str) {
        let pid = self.process.as_ref().unwrap().0.id().to_string();
        assert!(
            Command::new("kill")
                .args([signal, &pid])
                .status()
                .unwrap()
                .success()
        );
    }

    pub(crate) fn kill(&mut self) {
        self.process = None;
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.process = None;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A test CA and a leaf for `localhost` and 127.0.0.1 signed by it, as PEM
/// files in `dir`: the CA's, the leaf's and the leaf's key.
fn test_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{CertificateParams, CertifiedIssuer, KeyPair};
    // Distinct names: OpenSSL (redis-server, redis-cli) takes a leaf whose
    // issuer is its own subject for self-signed.
    let name = |cn: &str| {
        let mut name = rcgen::DistinguishedName::new();
        name.push(rcgen::DnType::CommonName, cn);
        name
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name = name("cognito-facade test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut leaf =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    leaf.distinguished_name = name("localhost");
    let cert = leaf.signed_by(&key, &ca).unwrap();
    let write = |name: &str, pem: String| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    (
        write("ca.pem", ca.pem()),
        write("redis.pem", cert.pem()),
        write("redis.key", key.serialize_pem()),
    )
}

/// A TLS terminator on a free loopback port in front of the plain server
/// on `to`, serving `cert` with `key` (rustls, in this test's runtime, so
/// it stops with it). Returns its port.
fn tls_terminator(cert: &Path, key: &Path, to: u16) -> u16 {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
    let certs = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(inbound).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    port
}

/// A fleet key file of 32 random bytes, mode 0600, in `dir`.
pub(crate) fn key_file(dir: &Path, seed: u8) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join(format!("fleet-{seed}.key"));
    let bytes: Vec<u8> = (0..32u8)
        .map(|i| i.wrapping_mul(31).wrapping_add(seed))
        .collect();
    std::fs::write(&path, bytes).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}
