//! What the test binaries share: a real anvil (Foundry 1.7.1 from the repository's npm
//! packages, installed by `npm ci` at the repository root), one per test, on a free port.
//! (`gateway/tests/api/anchoring.rs` has its own, which also restarts anvil on a given port.)

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// anvil's first dev account (a published test key).
pub(crate) const KEY: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

/// The path of a Foundry tool (`anvil`, `cast`) from the platform's npm package; fails (never
/// skips) when it is missing.
pub(crate) fn foundry_binary(tool: &str) -> PathBuf {
    let platform = match (std::env::consts::OS, std::env::consts::ARCH) {
        ("linux", "x86_64") => "linux-amd64",
        ("linux", "aarch64") => "linux-arm64",
        ("macos", "x86_64") => "darwin-amd64",
        ("macos", "aarch64") => "darwin-arm64",
        (os, arch) => panic!("no Foundry npm package for {os} {arch}"),
    };
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let binary = root.join(format!(
        "node_modules/@foundry-rs/{tool}-{platform}/bin/{tool}"
    ));
    assert!(
        binary.is_file(),
        "{tool} is missing at {}: run `npm ci` in the repository root",
        binary.display()
    );
    binary
}

/// An anvil process, killed on drop.
pub(crate) struct Anvil {
    child: Child,
    /// Its JSON-RPC URL.
    pub(crate) url: String,
}

impl Anvil {
    /// Starts anvil with `args` on a free port; fails (never skips) when anvil is missing.
    pub(crate) fn start(args: &[&str]) -> Self {
        let binary = foundry_binary("anvil");
        let mut child = Command::new(&binary)
            .args(["--port", "0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("anvil starts");
        let stdout = child.stdout.take().expect("anvil's stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads the listening address, then keeps draining anvil's output so it never blocks.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(address) = line.strip_prefix("Listening on ") {
                    let _ = tx.send(address.trim().to_owned());
                }
            }
        });
        let address = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("anvil prints its address");
        Self {
            child,
            url: format!("http://{address}"),
        }
    }
}

impl Drop for Anvil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
