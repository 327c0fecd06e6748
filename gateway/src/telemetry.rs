//! Logging setup: structured JSON (or human-readable) logs through `tracing`.
//! No patient data is ever written to a span or an event.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt;

use crate::config::LogConfig;

/// Installs the global subscriber (once; later calls are ignored, as in tests).
pub fn init(config: &LogConfig) {
    let filter = EnvFilter::try_new(&config.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let result = if config.format == "json" {
        fmt()
            .json()
            .with_env_filter(filter)
            .with_current_span(false)
            .try_init()
    } else {
        fmt().with_env_filter(filter).try_init()
    };
    let _ = result;
}
