//! `octomil-cloud serve`: run the bundled control plane until SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use octomil_cloud::store::Environment;
use octomil_cloud::{CloudStub, ExternalBroker, MqttMode};
use octomil_common::Secret;

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
    /// A proxy (IP or CIDR, repeatable) whose X-Forwarded-For is believed: requests from it
    /// take the right-most hop that is not a trusted proxy as their source address. None by
    /// default: the source address is always the TCP peer.
    #[arg(long = "trusted-proxy", value_name = "CIDR", value_parser = parse_cidr)]
    trusted_proxies: Vec<octomil_cloud::proxy::Cidr>,
    #[command(flatten)]
    mqtt: MqttArgs,
}

/// Where revocations go: the embedded broker (default), an external broker, or nowhere.
#[derive(Debug, clap::Args)]
struct MqttArgs {
    /// Embedded broker (MQTT 3.1.1 over TLS) listen address; port 0 picks a free port (see
    /// mqtt_url in cloud.json).
    #[arg(long, default_value = "127.0.0.1:0", conflicts_with_all = ["mqtt_broker", "no_mqtt"])]
    mqtt_listen: SocketAddr,
    /// Use this external broker instead of the embedded one: mqtts://host:port, or
    /// mqtt://host:port to a loopback host.
    #[arg(long, value_name = "URL", conflicts_with = "no_mqtt")]
    mqtt_broker: Option<String>,
    /// Username of the cloud's session on the external broker.
    #[arg(long, requires = "mqtt_broker")]
    mqtt_username: Option<String>,
    /// File holding the password of the cloud's session on the external broker.
    #[arg(long, value_name = "FILE", requires = "mqtt_broker")]
    mqtt_password_file: Option<PathBuf>,
    /// CA that signed the external broker's certificate (default: the cloud's own CA).
    #[arg(long, value_name = "FILE", requires = "mqtt_broker")]
    mqtt_ca_file: Option<PathBuf>,
    /// Broker URL handed to devices, when it differs from the one the cloud uses.
    #[arg(long, value_name = "URL", conflicts_with = "no_mqtt")]
    mqtt_device_url: Option<String>,
    /// How long a revoke waits for the broker's acknowledgement before answering 202.
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    mqtt_ack_timeout_ms: u64,
    /// Device connections the embedded broker holds at once (the cloud's own session has a
    /// place of its own beyond them); one more is refused.
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..), conflicts_with_all = ["mqtt_broker", "no_mqtt"])]
    mqtt_max_connections: u32,
    /// Run without any broker: revocations take effect at each device's next refresh.
    #[arg(long)]
    no_mqtt: bool,
}

impl MqttArgs {
    fn mode(&self) -> anyhow::Result<MqttMode> {
        if self.no_mqtt {
            return Ok(MqttMode::Disabled);
        }
        let Some(url) = &self.mqtt_broker else {
            return Ok(embedded(self.mqtt_listen));
        };
        let password = match &self.mqtt_password_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading --mqtt-password-file {}", path.display()))?;
                Some(Secret::new(text.trim_end_matches(['\r', '\n']).to_owned()))
            }
            None => None,
        };
        Ok(MqttMode::External(ExternalBroker {
            url: url.clone(),
            username: self.mqtt_username.clone(),
            password,
            ca_file: self.mqtt_ca_file.clone(),
        }))
    }
}

#[cfg(feature = "embedded-broker")]
fn embedded(listen: SocketAddr) -> MqttMode {
    MqttMode::Embedded { listen }
}

#[cfg(not(feature = "embedded-broker"))]
fn embedded(_listen: SocketAddr) -> MqttMode {
    tracing::warn!("built without the embedded broker: pass --mqtt-broker to push revocations");
    MqttMode::Disabled
}

fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let Command::Serve(args) = cli.command;
    init_tracing(args.log_format);
    if cfg!(panic = "abort") {
        tracing::warn!(
            "built with panic = \"abort\": a bug in the embedded MQTT broker would stop the \
             whole cloud; ship the cloud built with --profile cloud-release (docs/mqtt.md)"
        );
    }
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
    let mut builder = CloudStub::builder(&args.state_dir)
        .mqtt(args.mqtt.mode()?)
        .mqtt_ack_timeout(Duration::from_millis(args.mqtt.mqtt_ack_timeout_ms));
    #[cfg(feature = "embedded-broker")]
    {
        builder = builder.mqtt_broker_limits(octomil_cloud::mqtt::broker::Limits {
            max_connections: args.mqtt.mqtt_max_connections as usize,
            ..Default::default()
        });
    }
    if let Some(url) = &args.mqtt.mqtt_device_url {
        builder = builder.mqtt_device_url(url.clone());
    }
    let handle = builder
        .http_listen(args.http_listen)
        .extra_names(args.tls_names)
        .owner_email(args.owner_email)
        .environment(env)
        .trusted_proxies(octomil_cloud::proxy::TrustedProxies::new(
            args.trusted_proxies,
        ))
        .spawn()
        .await
        .with_context(|| format!("starting octomil-cloud in {}", args.state_dir.display()))?;
    eprintln!(
        "octomil-cloud listening on {} (MQTT: {}; state in {})",
        handle.http_url,
        handle.info.mqtt_url.as_deref().unwrap_or("none"),
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

fn parse_cidr(s: &str) -> Result<octomil_cloud::proxy::Cidr, String> {
    s.parse()
        .map_err(|e: octomil_cloud::proxy::ProxyError| e.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn parse(extra: &[&str]) -> Result<Cli, clap::Error> {
        let mut argv = vec!["octomil-cloud", "serve", "--state-dir", "/tmp/x"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv)
    }

    #[test]
    fn the_embedded_broker_cap_is_a_flag_for_the_embedded_broker_only() {
        let Command::Serve(a) = parse(&[]).unwrap().command;
        assert_eq!(a.mqtt.mqtt_max_connections, 10_000);
        let Command::Serve(a) = parse(&["--mqtt-max-connections", "20000"]).unwrap().command;
        assert_eq!(a.mqtt.mqtt_max_connections, 20_000);
        assert!(parse(&["--mqtt-max-connections", "0"]).is_err());
        assert!(
            parse(&[
                "--mqtt-max-connections",
                "5",
                "--mqtt-broker",
                "mqtts://b:8883"
            ])
            .is_err()
        );
    }
}
