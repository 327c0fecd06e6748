//! The embedded development chain (`chain.mode = "embedded"`): an anvil process from the
//! project's npm-installed Foundry toolchain, started and stopped with the gateway.
//!
//! - It listens on 127.0.0.1 only, mines a block every `chain.anvil_block_time_secs` (and
//!   one with every transaction), and keeps its state in `anvil-state.json` in the data
//!   directory (written every second and on exit), so that a restarted gateway finds its
//!   registry and its anchors again. A state lost or unreadable (a crash mid-write) starts
//!   a fresh chain: the anchoring worker sees that the chain lost the log's batches and
//!   anchors them again (see [`super`]).
//! - Its pid is kept in `anvil.pid`: an anvil left behind by a gateway that was killed is
//!   stopped at the next start (only if that process is an anvil using this state file).
//! - The anchoring account is not one of anvil's published dev accounts: the gateway makes
//!   its own key (`anchor-signer.key`, readable by its owner only) and funds it with
//!   `anvil_setBalance`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

use crate::config::ChainConfig;

/// How long anvil may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running anvil, killed when dropped.
#[derive(Debug)]
pub struct Anvil {
    child: Child,
    url: String,
    pid_file: PathBuf,
}

impl Anvil {
    /// Starts anvil with its state in `data_dir` and waits until it listens.
    pub async fn start(config: &ChainConfig, data_dir: &Path) -> anyhow::Result<Anvil> {
        let binary = find_binary(config.anvil_path.as_deref())?;
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating the data directory {}", data_dir.display()))?;
        let state = data_dir.join("anvil-state.json");
        let pid_file = data_dir.join("anvil.pid");
        stop_stale(&pid_file, &state).await;
        match Self::spawn(&binary, config, &state, &pid_file).await {
            Ok(anvil) => Ok(anvil),
            Err(error) if state.exists() => {
                // most likely a state file cut short by a crash: keep it aside, start afresh
                let aside = data_dir.join(format!(
                    "anvil-state.unreadable-{}.json",
                    crate::model::Instant::now().millis()
                ));
                tracing::warn!(%error, aside = %aside.display(), "anvil did not start with its saved state; starting a fresh chain");
                std::fs::rename(&state, &aside)?;
                Self::spawn(&binary, config, &state, &pid_file).await
            }
            Err(error) => Err(error),
        }
    }

    async fn spawn(
        binary: &Path,
        config: &ChainConfig,
        state: &Path,
        pid_file: &Path,
    ) -> anyhow::Result<Anvil> {
        let mut child = Command::new(binary)
            .args(["--host", "127.0.0.1", "--port"])
            .arg(config.anvil_port.to_string())
            .arg("--block-time")
            .arg(config.anvil_block_time_secs.max(1).to_string())
            .arg("--state")
            .arg(state)
            .args(["--state-interval", "1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting anvil ({})", binary.display()))?;
        if let Some(pid) = child.id() {
            std::fs::write(pid_file, pid.to_string())?;
        }
        let stdout = child.stdout.take().context("anvil's standard output")?;
        let stderr = child.stderr.take().context("anvil's standard error")?;
        let (address_tx, address_rx) = tokio::sync::oneshot::channel();
        // Reads the listening address, then keeps draining the output so anvil never blocks
        // on a full pipe (its lines name transactions and blocks: nothing to keep).
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            let mut address_tx = Some(address_tx);
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(address) = line.strip_prefix("Listening on ")
                    && let Some(tx) = address_tx.take()
                {
                    let _ = tx.send(address.trim().to_owned());
                }
            }
        });
        let (error_tx, error_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            let mut last = String::new();
            while let Ok(Some(line)) = lines.next_line().await {
                last = line;
            }
            let _ = error_tx.send(last);
        });
        let address = tokio::select! {
            address = address_rx => address.ok(),
            _ = tokio::time::sleep(START_TIMEOUT) => None,
        };
        let Some(address) = address else {
            let _ = child.start_kill();
            let status = child.wait().await.ok();
            let last = tokio::time::timeout(Duration::from_secs(1), error_rx)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            anyhow::bail!("anvil did not start (exit {status:?}): {last}");
        };
        tracing::info!(rpc = %format!("http://{address}"), "embedded anvil chain listening");
        Ok(Anvil {
            child,
            url: format!("http://{address}"),
            pid_file: pid_file.to_owned(),
        })
    }

    /// The JSON-RPC URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Stops anvil: SIGTERM first so that it writes its state, then a kill after 5 seconds.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            terminate(pid).await;
            if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
                .await
                .is_err()
            {
                let _ = self.child.kill().await;
            }
        }
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

/// Sends SIGTERM to `pid` (with the system's `kill`: the gateway has no unsafe code).
async fn terminate(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
}

/// Stops an anvil left running by a gateway that was killed: the process in `pid_file`, if
/// it is still an anvil using `state` (checked in `/proc`, so never another process that
/// reused the pid).
async fn stop_stale(pid_file: &Path, state: &Path) {
    let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
    else {
        return;
    };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline);
    if cmdline.contains("anvil") && cmdline.contains(&*state.to_string_lossy()) {
        tracing::warn!(pid, "stopping an anvil left running by an earlier gateway");
        terminate(pid).await;
        for _ in 0..50 {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let _ = std::fs::remove_file(pid_file);
}

/// The anvil binary: the configured one, else the npm package's from the working directory
/// or the executable's directory upwards, else `anvil` on the `PATH`.
fn find_binary(configured: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = configured {
        anyhow::ensure!(
            path.is_file(),
            "chain.anvil_path {} is not a file",
            path.display()
        );
        return Ok(path.to_owned());
    }
    let package = npm_package();
    let mut starts = Vec::new();
    if let Ok(dir) = std::env::current_dir() {
        starts.push(dir);
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_owned))
    {
        starts.push(dir);
    }
    for start in &starts {
        for dir in start.ancestors() {
            let candidate = dir
                .join("node_modules/@foundry-rs")
                .join(&package)
                .join("bin/anvil");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("anvil");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    anyhow::bail!(
        "no anvil found for the embedded chain: run `npm ci` in the repository (it installs \
         @foundry-rs/{package}), set chain.anvil_path, or configure a chain (chain.mode = \"rpc\")"
    )
}

/// The Foundry npm package that holds this platform's binaries.
fn npm_package() -> String {
    let os = match std::env::consts::OS {
        "macos" => "darwin",
        other => other,
    };
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    format!("anvil-{os}-{arch}")
}
