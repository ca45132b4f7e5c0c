//! A real `redis-server` (or `valkey-server`) for this crate's unit tests,
//! on a free loopback port with nothing saved, killed when dropped: the one
//! the integration tests use (found on `PATH`, or installed into `target/`;
//! see `tests/support/store_server.rs`).

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::{FleetConfig, FleetKey, Store};

// The unit tests use the server only, not its CLI.
#[allow(dead_code)]
#[path = "../../tests/support/store_server.rs"]
mod store_server;

/// A server process and where it listens.
pub(crate) struct TestServer {
    child: Child,
    pub(crate) port: u16,
    dir: PathBuf,
}

impl TestServer {
    /// Starts one and waits (bounded) until it answers.
    pub(crate) fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let dir = std::env::temp_dir().join(format!(
            "cognito-facade-unit-redis-{}-{port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let server = &store_server::store_server().server;
        let child = Command::new(server)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "{server:?} did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, port, dir }
    }

    /// A store on this server, connected (bounded), with its pushes going
    /// to `deliver`.
    pub(crate) async fn store<P>(&self, deliver: P) -> Store
    where
        P: Fn(redis::PushInfo) + Clone + Send + Sync + 'static,
    {
        let store = Store::start(&self.config(), "revocations", deliver);
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.connected().is_none() {
            assert!(Instant::now() < deadline, "the store did not connect");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        store
    }

    /// A fleet on this server, with a key of its own.
    pub(crate) fn config(&self) -> FleetConfig {
        let key_file = self.dir.join("fleet.key");
        std::fs::write(&key_file, [7u8; 32]).unwrap();
        let owner_only = std::os::unix::fs::PermissionsExt::from_mode(0o600);
        std::fs::set_permissions(&key_file, owner_only).unwrap();
        let key = FleetKey::from_file("fleet-key-file", &key_file).unwrap();
        FleetConfig::new(&format!("redis://127.0.0.1:{}", self.port), key)
    }

    /// `redis-cli`-free: one command on a fresh connection.
    pub(crate) async fn command(&self, args: &[&str]) -> redis::Value {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}", self.port)).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        cmd.query_async(&mut conn).await.unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
