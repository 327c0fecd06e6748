//! Key files the gateway makes for itself in its data directory (the embedded chain's
//! anchoring key, the token-signing key): written once, readable by their owner only.

use std::path::Path;

use anyhow::Context as _;

/// Creates `path` (and its directory) holding `contents`, mode 0600 on Unix, flushed to disk;
/// an existing file is an error, never overwritten.
pub fn create(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the directory {}", dir.display()))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    std::io::Write::write_all(&mut file, contents)?;
    file.sync_all()?;
    Ok(())
}
