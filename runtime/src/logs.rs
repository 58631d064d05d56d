//! Structured logs to stderr; `RUST_LOG` overrides the default filter.

/// Logs to stderr with the default filter `info,rdkafka=warn`.
pub fn init_tracing() {
    init_tracing_with("info,rdkafka=warn");
}

/// Logs to stderr with `default` as the filter unless `RUST_LOG` is set.
pub fn init_tracing_with(default: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default.into()),
        )
        .with_writer(std::io::stderr)
        .init();
}
