//! The tollgate demo server.
//!
//! ```text
//! cargo run --release --example server -- [--config PATH] [--bind ADDR]
//! ```
//!
//! Defaults: `--config config/ratelimit.toml`, `--bind 127.0.0.1:3000`. Configuration values
//! can be overridden with `TOLLGATE_` environment variables (`TOLLGATE_STORE__BACKEND=redis`).
//! An invalid configuration exits non-zero before listening, naming the file and the key.

mod app;

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use tollgate::Config;

/// The tollgate demo server: the routes of CONTRACT.md behind one rate limiter.
#[derive(Parser)]
#[command(name = "server")]
struct Args {
    /// The configuration file (TOML); `TOLLGATE_` environment variables override it.
    #[arg(long, value_name = "PATH", default_value = "config/ratelimit.toml")]
    config: String,
    /// The address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:3000")]
    bind: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();

    // Bad flags: clap prints why and exits with status 2, before anything listens.
    let args = Args::parse();
    let layer = match Config::load(&args.config).map_err(Into::into).and_then(app::layer) {
        Ok(layer) => layer,
        Err(error) => {
            let message = error.to_string();
            if message.contains(&args.config) {
                eprintln!("error: invalid configuration: {message}");
            } else {
                eprintln!("error: invalid configuration in {}: {message}", args.config);
            }
            return ExitCode::FAILURE;
        }
    };
    let listener = match tokio::net::TcpListener::bind(&args.bind).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("error: cannot listen on {}: {error}", args.bind);
            return ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().expect("a bound listener has an address");
    println!("listening on http://{addr}");
    let app = app::router(layer).into_make_service_with_connect_info::<SocketAddr>();
    if let Err(error) = axum::serve(listener, app).with_graceful_shutdown(shutdown()).await {
        eprintln!("error: server failed: {error}");
        return ExitCode::FAILURE;
    }
    tracing::info!("shut down gracefully");
    ExitCode::SUCCESS
}

/// Resolves on SIGINT or SIGTERM; axum then stops accepting and lets in-flight requests finish.
async fn shutdown() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {}
        _ = terminate => {}
    }
}
