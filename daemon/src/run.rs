//! Wiring: open the store, bind the socket, start the refresh loop and the watchdog, serve
//! until `shutdown`, then drain within the grace period.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::agent::{Agent, BootstrapSource, Command};
use crate::api::{self, ApiState};
use crate::cloud::CloudClient;
use crate::config::Config;
use crate::limits::Limiter;
use crate::metrics::Metrics;
use crate::notify::{self, Heartbeat};
use crate::socket::{self, AccessPolicy, SocketOptions, SocketStats};
use crate::state::{Snapshot, SnapshotTx};
use crate::store::{SealKey, Store};

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Cloud(#[from] crate::cloud::CloudError),
    #[error(transparent)]
    Socket(#[from] crate::socket::SocketError),
    #[error("TLS setup: {0}")]
    Tls(String),
}

/// Swaps the log filter (built by the binary, which owns the subscriber).
pub type LogLevelHook = Box<dyn Fn(&str) + Send + Sync>;

/// Hooks the binary provides (tests pass none).
#[derive(Default)]
pub struct Hooks {
    /// Applies a new log filter on SIGHUP.
    pub set_log_level: Option<LogLevelHook>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks").finish_non_exhaustive()
    }
}

/// Runs the daemon until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    hooks: Hooks,
) -> Result<(), RunError> {
    let credentials_dir = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
    // 0700 before the seal key file may be created in it (the store checks it again).
    crate::store::ensure_private_dir(&config.state_dir)?;
    let (seal_key, source) =
        SealKey::load_or_create(credentials_dir.as_deref(), &config.seal_key_file)?;
    tracing::info!(source = ?source, "loaded the sealing key");
    let store = Arc::new(Store::open(&config.state_dir, seal_key)?);
    let persisted = {
        let s = store.clone();
        tokio::task::spawn_blocking(move || s.load())
            .await
            .map_err(|e| RunError::StateDir {
                path: config.state_dir.clone(),
                source: std::io::Error::other(e),
            })??
    };
    let cloud = CloudClient::new(&config.cloud_url, &config.ca_file, config.cloud_timeout)?;
    let ca_pem = std::fs::read(&config.ca_file).map_err(|source| RunError::StateDir {
        path: config.ca_file.clone(),
        source,
    })?;
    let mqtt_tls = octomil_common::tls::client_config(&ca_pem)
        .map_err(|e| RunError::Tls(format!("{}: {e}", config.ca_file.display())))?;

    // Until the refresh loop publishes, say what it is about to do (never "unregistered",
    // which means "stopped trying").
    let mut initial = Snapshot::new(config.device_id.as_str().to_owned());
    initial.phase = if persisted.revoked.is_some() {
        crate::state::Phase::Revoked
    } else {
        crate::state::Phase::Registering
    };
    let (tx, rx) = SnapshotTx::new(initial);
    let metrics = Arc::new(Metrics::default());
    let limits = Arc::new(Limiter::open(
        Some(config.state_dir.join("limits.bin")),
        config.limit_per_uid_share,
    ));
    let stats = Arc::new(SocketStats::default());
    let (cmd_tx, cmd_rx) = mpsc::channel::<Command>(16);
    let (policy_tx, policy_rx) = watch::channel(Arc::new(policy(&config)));

    let opts = SocketOptions {
        path: config.socket.clone(),
        mode: config.socket_mode,
        group: config.socket_group,
        max_connections: config.max_connections,
        ..SocketOptions::default()
    };
    let listener = socket::bind(&opts)?;
    let routes = socket::Routes {
        fast: Some(Arc::new(api::FastApi {
            snapshot: rx.clone(),
            metrics: metrics.clone(),
            limits: limits.clone(),
        })),
        router: api::router(ApiState {
            snapshot: rx.clone(),
            commands: cmd_tx.clone(),
            metrics: metrics.clone(),
            limits: limits.clone(),
            socket_stats: stats.clone(),
            refresh_timeout: config.cloud_timeout * 2,
        }),
    };
    let tasks = tokio_util::task::TaskTracker::new();
    let serve_stop = CancellationToken::new();
    {
        let (opts, stop, grace) = (opts.clone(), serve_stop.clone(), config.shutdown_grace);
        tasks.spawn(async move {
            socket::serve(listener, routes, policy_rx, &opts, stats, stop, grace).await
        });
    }

    let watchdog = notify::watchdog_interval();
    if let Some(w) = watchdog
        && w <= config.cloud_timeout
    {
        tracing::warn!(watchdog = ?w, cloud_timeout = ?config.cloud_timeout, "WatchdogSec should exceed cloud_timeout, or a slow cloud call looks like a wedged daemon");
    }
    let heartbeat = Arc::new(Heartbeat::new());
    heartbeat.beat();
    let agent_stop = CancellationToken::new();
    let agent = Agent {
        device_id: config.device_id.clone(),
        cloud,
        store,
        persisted,
        bootstrap: BootstrapSource {
            credentials_dir,
            file: config.bootstrap_token_file.clone(),
            env: std::env::var("OCTOMIL_BOOTSTRAP_TOKEN")
                .ok()
                .map(octomil_common::Secret::new),
        },
        tx: tx.clone(),
        mqtt_ca_pem: Arc::new(ca_pem),
        client_tls: None,
        metrics: metrics.clone(),
        limits: limits.clone(),
        heartbeat: heartbeat.clone(),
        beat_every: notify::beat_interval(watchdog),
        commands: cmd_rx,
        shutdown: agent_stop.clone(),
    };
    tasks.spawn(agent.run());
    tasks.spawn(save_limits(limits.clone(), agent_stop.clone()));
    tasks.spawn(
        crate::mqtt::Session {
            device_id: config.device_id.clone(),
            tls: mqtt_tls,
            keepalive: config.mqtt_keepalive,
            snapshot: rx.clone(),
            tx: tx.clone(),
            commands: cmd_tx.clone(),
            metrics,
            shutdown: agent_stop.clone(),
        }
        .run(),
    );
    if let Some(w) = watchdog {
        tasks.spawn(notify::watchdog(w, heartbeat, agent_stop.clone()));
    }
    tx.update(|s| s.detail = "serving".into());
    notify::ready(&format!("serving on {}", config.socket.display()));
    tracing::info!(socket = %config.socket.display(), device_id = %config.device_id, "octomild ready");

    let reload = tasks.spawn(reload_on_sighup(
        config.clone(),
        policy_tx,
        cmd_tx,
        hooks,
        shutdown.clone(),
    ));
    shutdown.cancelled().await;
    tracing::info!("shutting down");
    notify::stopping();
    agent_stop.cancel();
    serve_stop.cancel();
    reload.abort();
    tasks.close();
    tasks.wait().await;
    if let Err(e) = limits.save_if_dirty() {
        tracing::warn!(error = %e, "could not save the rate-limit state");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Saves the limiter state at most once a second while it changes (a restart loop must not
/// reset a spent budget; a second of grants is what a crash can forget).
async fn save_limits(limits: Arc<Limiter>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let l = limits.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || l.save_if_dirty()).await {
            tracing::warn!(error = %e, "could not save the rate-limit state");
        }
    }
}

fn policy(config: &Config) -> AccessPolicy {
    AccessPolicy {
        allowed_uids: config.allowed_uids.clone(),
        allowed_gids: config.allowed_gids.clone(),
    }
}

/// SIGHUP re-reads the config: access lists and log level apply at once; a parked
/// registration retries (the bootstrap token may have arrived). Other keys need a restart.
async fn reload_on_sighup(
    config: Config,
    policy_tx: watch::Sender<Arc<AccessPolicy>>,
    cmd_tx: mpsc::Sender<Command>,
    hooks: Hooks,
    shutdown: CancellationToken,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    let mut current = config;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = hup.recv() => if r.is_none() { return },
        }
        match crate::config::load(&current.path) {
            Ok(new) => {
                policy_tx.send_replace(Arc::new(policy(&new)));
                if let Some(f) = &hooks.set_log_level {
                    f(&new.log_level);
                }
                let restart_needed = Config {
                    allowed_uids: current.allowed_uids.clone(),
                    allowed_gids: current.allowed_gids.clone(),
                    log_level: current.log_level.clone(),
                    ..new.clone()
                } != current;
                if restart_needed {
                    tracing::warn!(
                        "configuration changed beyond allowed_uids, allowed_gids and log_level; those changes apply at the next restart"
                    );
                }
                tracing::info!(path = %new.path.display(), "configuration reloaded");
                current = Config {
                    allowed_uids: new.allowed_uids,
                    allowed_gids: new.allowed_gids,
                    log_level: new.log_level,
                    ..current
                };
                let _ = cmd_tx.send(Command::Reload).await;
            }
            Err(e) => tracing::error!("reload refused, keeping the running configuration: {e}"),
        }
    }
}
