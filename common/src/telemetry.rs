//! Logging setup shared by every binary: `RUST_LOG`-style filtering, plain or JSON lines.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber once; later calls are ignored (tests start many farms).
/// `default_directive` applies when `RUST_LOG` is unset, e.g. `info` for servers, `warn` for
/// the interactive CLI whose progress bars would be broken up by log lines.
pub fn init(default_directive: &str, json: bool) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_directive));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _already_installed = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
