//! `octomil-cloud serve`: run the bundled control plane until SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use octomil_cloud::CloudStub;
use octomil_cloud::store::Environment;

#[derive(Debug, Parser)]
#[command(
    name = "octomil-cloud",
    version,
    about = "The bundled Octomil Edge cloud control plane"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the control-plane API over HTTPS.
    Serve(ServeArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// State directory (created 0700): database, CA, keys, first-start secrets, cloud.json.
    #[arg(long, env = "OCTOMIL_CLOUD_STATE_DIR")]
    state_dir: PathBuf,
    /// HTTPS listen address; port 0 picks a free port (see cloud.json for the one chosen).
    #[arg(long, default_value = "127.0.0.1:0")]
    http_listen: SocketAddr,
    /// Extra DNS names or IPs for the server certificate, beyond localhost and loopback.
    #[arg(long = "tls-name")]
    tls_names: Vec<String>,
    /// Email of the Owner created on first start.
    #[arg(long, default_value = "owner@octomil.local")]
    owner_email: String,
    /// Create a sandbox organization (edg_test_ keys) on first start.
    #[arg(long)]
    sandbox: bool,
    #[arg(long, value_enum, default_value = "human")]
    log_format: LogFormat,
}

fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let Command::Serve(args) = cli.command;
    init_tracing(args.log_format);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(serve(args))
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let env = if args.sandbox {
        Environment::Test
    } else {
        Environment::Live
    };
    let handle = CloudStub::builder(&args.state_dir)
        .http_listen(args.http_listen)
        .extra_names(args.tls_names)
        .owner_email(args.owner_email)
        .environment(env)
        .spawn()
        .await
        .with_context(|| format!("starting octomil-cloud in {}", args.state_dir.display()))?;
    eprintln!(
        "octomil-cloud listening on {} (state in {})",
        handle.http_url,
        args.state_dir.display()
    );
    let stop = handle.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        stop.cancel();
    });
    handle.wait().await;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
