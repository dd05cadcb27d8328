//! `octomild`: parse flags, set up logging, load the config, and hand over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use octomild::cli::{self, Call};
use octomild::config::{self, Config, LogFormat};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

const DEFAULT_SOCKET: &str = "/run/octomil/octomild.sock";

#[derive(Debug, Parser)]
#[command(
    name = "octomild",
    version,
    about = "Octomil Edge device-identity daemon"
)]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the daemon in the foreground (what systemd runs).
    Run {
        #[arg(long, env = "OCTOMIL_CONFIG", default_value = config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Show the daemon's state (exit 0 active, 3 not active, 4 revoked, 69 not running).
    Status(ClientArgs),
    /// Print the current device key (exit 5 when none is available yet, 4 revoked).
    Token(ClientArgs),
    /// Refresh the device key now (root only).
    Refresh(ClientArgs),
    /// Take permits of the local rate-limit budget (exit 75 with the wait when spent).
    Acquire {
        /// `control_plane` or `inference`.
        surface: String,
        /// How many permits, all or nothing.
        #[arg(long, default_value_t = 1)]
        n: u32,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, clap::Args)]
struct ClientArgs {
    #[arg(long, env = "OCTOMIL_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Print the daemon's JSON answer.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // One thread, like nginx's event loop: the daemon's work is small and I/O-bound (store
    // writes and wipes go to the blocking pool), and a single thread answers GET /v1/token with
    // steadier latency than two workers handing tasks between them (BENCHMARKS.md), with fewer
    // threads on a small device.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("octomild: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match args.command {
        Cmd::Run { config } => rt.block_on(run(config)),
        Cmd::Status(a) => rt.block_on(cli::run(Call::Status, a.socket, a.json)),
        Cmd::Token(a) => rt.block_on(cli::run(Call::Token, a.socket, a.json)),
        Cmd::Refresh(a) => rt.block_on(cli::run(Call::Refresh, a.socket, a.json)),
        Cmd::Acquire { surface, n, client } => rt.block_on(cli::run(
            Call::Acquire { surface, n },
            client.socket,
            client.json,
        )),
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

async fn run(path: PathBuf) -> i32 {
    // The one crypto provider of the process, before anything builds a TLS config.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = match config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("octomild: {e}");
            return config::EX_CONFIG;
        }
    };
    let set_level = init_tracing(&config);
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    let hooks = octomild::run::Hooks {
        set_log_level: Some(set_level),
    };
    match octomild::run::run(config, shutdown, hooks).await {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("octomild: {e}");
            1
        }
    }
}

/// Sets up logging; returns a function that swaps the filter (for SIGHUP).
fn init_tracing(config: &Config) -> Box<dyn Fn(&str) + Send + Sync> {
    // RUST_LOG overrides log_level when it parses; log_level was checked by config::load.
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|spec| config::log_filter(&spec))
        .or_else(|| config::log_filter(&config.log_level))
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter);
    match config.log_format {
        LogFormat::Human => registry.with(fmt).init(),
        LogFormat::Json => registry.with(fmt.json()).init(),
    }
    Box::new(move |level: &str| {
        if let Some(f) = config::log_filter(level) {
            let _ = handle.reload(f);
        }
    })
}

async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    if let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    } else {
        let _ = tokio::signal::ctrl_c().await;
    }
    shutdown.cancel();
}
