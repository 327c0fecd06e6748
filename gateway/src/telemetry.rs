//! Logging setup: structured JSON (or human-readable) logs through `tracing`.
//! No patient data is ever written to a span or an event.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::LogConfig;

/// Installs the global subscriber, writing to standard output (once; later calls are
/// ignored, as in tests).
pub fn init(config: &LogConfig) {
    init_with(config, std::io::stdout);
}

/// Installs the global subscriber writing to standard error, for commands whose standard
/// output is their answer (`erase`).
pub fn init_stderr(config: &LogConfig) {
    init_with(config, std::io::stderr);
}

fn init_with<W>(config: &LogConfig, writer: W)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(&config.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let result = if config.format == "json" {
        fmt()
            .json()
            .with_env_filter(filter)
            .with_current_span(false)
            .with_writer(writer)
            .try_init()
    } else {
        fmt().with_env_filter(filter).with_writer(writer).try_init()
    };
    let _ = result;
}
