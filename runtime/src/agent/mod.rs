//! The node agent (`svcnft run`): applies the policy, follows its changes and
//! repairs drift, and serves proxy health, metrics and the health-check node
//! ports.
//!
//! Netlink work happens on the calling thread (it holds the network namespace
//! and the committed state); the HTTP servers run on a small tokio runtime on
//! a thread of their own, so a slow client never delays a sync.

mod conntrack;
mod health;
mod http;
mod metrics;
mod proxy;
mod state;
mod syncer;
mod watch;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use conntrack::{remove_flows, udp_services_to_clean, UdpService};
pub use health::HealthServers;
pub use http::HEADER_READ_TIMEOUT;
pub use metrics::{Metrics, SyncKind};
pub use state::{Health, Status};
pub use syncer::{SyncError, Syncer};
pub use watch::PolicyWatcher;

use crate::apply::{Applier, ApplyError};

/// How often the generation id is compared with ours.
const DRIFT_POLL: Duration = Duration::from_millis(250);
/// Quiet time after a change that may be part of a write still going on.
const DEBOUNCE: Duration = Duration::from_millis(75);
/// A stream of changes still gets synced this often.
const MAX_DEBOUNCE: Duration = Duration::from_secs(1);

/// `svcnft run`'s options.
#[derive(Debug, Clone)]
pub struct Config {
    pub policy: Vec<PathBuf>,
    pub node: String,
    pub healthz_bind_address: SocketAddr,
    pub metrics_bind_address: SocketAddr,
    /// The period of full reconciles; two of them bound a change's wait.
    pub sync_period: Duration,
    pub cleanup_on_exit: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot listen on {address}: {source}")]
    Bind { address: SocketAddr, source: std::io::Error },
    #[error("cannot watch the policy: {0}")]
    Watch(#[from] notify::Error),
    #[error("cannot start: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Apply(#[from] ApplyError),
}

/// What wakes the sync loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A policy file changed. `settled` when the change is a finished one (the
    /// file was closed after writing, renamed into place or removed), so that
    /// nothing more of it is to come; otherwise a writer may still be writing.
    Changed { settled: bool },
    /// SIGHUP: reread the policy.
    Reload,
    /// SIGTERM or SIGINT.
    Stop,
}

/// Structured logs on stderr, at `info` unless `RUST_LOG` says otherwise.
pub fn log_to_stderr() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

/// Runs the agent until SIGTERM or SIGINT.
pub fn run(config: Config) -> Result<(), AgentError> {
    let applier = Applier::open()?;
    let status = Arc::new(Status::new(config.sync_period));
    let metrics = Arc::new(Metrics::new());
    let bind = |address: SocketAddr| {
        std::net::TcpListener::bind(address).map_err(|source| AgentError::Bind { address, source })
    };
    let (healthz, metrics_listener) = (bind(config.healthz_bind_address)?, bind(config.metrics_bind_address)?);

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let handle = runtime.handle().clone();
    let (stop_servers, stopped) = tokio::sync::oneshot::channel::<()>();
    let (healthz_handler, metrics_handler) = (proxy::healthz(status.clone()), proxy::metrics(metrics.clone()));
    let servers = std::thread::Builder::new().name("servers".into()).spawn(move || {
        runtime.block_on(async move {
            tokio::spawn(http::serve(healthz, healthz_handler));
            tokio::spawn(http::serve(metrics_listener, metrics_handler));
            let _ = stopped.await;
        });
    })?;
    tracing::info!(healthz = %config.healthz_bind_address, metrics = %config.metrics_bind_address, "serving");

    let (events, rx) = mpsc::channel();
    let _watcher = PolicyWatcher::start(&config.policy, events.clone())?;
    forward_signals(events)?;
    let mut syncer = Syncer::new(config.policy.clone(), config.node.clone(), applier, status.clone(), metrics.clone());
    let mut health = HealthServers::new(handle, status.clone());
    sync_loop(&mut syncer, &mut health, &rx, &metrics, config.sync_period);

    drop(health);
    let _ = stop_servers.send(());
    let _ = servers.join();
    if config.cleanup_on_exit {
        let report = syncer.cleanup()?;
        tracing::info!(operations = report.operations, "stopped; removed svcnft's tables");
    } else {
        tracing::info!("stopped; the rules stay in place");
    }
    Ok(())
}

/// Syncs on start, on every change and on drift, until told to stop.
fn sync_loop(
    syncer: &mut Syncer,
    health: &mut HealthServers,
    rx: &Receiver<Event>,
    metrics: &Metrics,
    period: Duration,
) {
    // Failures are logged and reported by the syncer; the loop goes on.
    let _ = syncer.reload();
    health.update(syncer.health_checks());
    let mut next_full = Instant::now() + period;
    loop {
        match rx.recv_timeout(DRIFT_POLL) {
            Ok(Event::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            Ok(event @ (Event::Changed { .. } | Event::Reload)) => {
                if event == Event::Reload {
                    tracing::info!("SIGHUP: rereading the policy");
                }
                syncer.change_pending();
                metrics.pending(1);
                let Some(changes) = debounce(rx, event) else { return };
                metrics.pending(changes as i64);
                let _ = syncer.reload();
                health.update(syncer.health_checks());
                continue;
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
        if Instant::now() >= next_full {
            next_full = Instant::now() + period;
            let _ = syncer.reconcile();
            health.update(syncer.health_checks());
        } else if let Err(e) = syncer.repair() {
            tracing::warn!(error = %e, "drift check or repair failed");
        }
    }
}

/// After the change `first`, waits until the policy is worth reading: at once
/// when the last change is settled (a write finished, or SIGHUP) and no other
/// is queued; after a quiet [`DEBOUNCE`] otherwise, and at most [`MAX_DEBOUNCE`]
/// while changes keep coming. `None` when told to stop meanwhile, otherwise how
/// many changes arrived (the first included).
pub fn debounce(rx: &Receiver<Event>, first: Event) -> Option<usize> {
    let settled = |event| matches!(event, Event::Changed { settled: true } | Event::Reload);
    let started = Instant::now();
    let (mut changes, mut last) = (1, first);
    while started.elapsed() < MAX_DEBOUNCE {
        let quiet = if settled(last) { Duration::ZERO } else { DEBOUNCE };
        match rx.recv_timeout(quiet) {
            Ok(Event::Stop) | Err(RecvTimeoutError::Disconnected) => return None,
            Ok(event) => (changes, last) = (changes + 1, event),
            Err(RecvTimeoutError::Timeout) => break,
        }
    }
    Some(changes)
}

/// SIGHUP → [`Event::Reload`]; SIGTERM and SIGINT → [`Event::Stop`].
fn forward_signals(events: mpsc::Sender<Event>) -> std::io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGHUP, SIGINT, SIGTERM])?;
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        for signal in signals.forever() {
            let event = if signal == SIGHUP { Event::Reload } else { Event::Stop };
            if events.send(event).is_err() {
                return;
            }
        }
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debounce_waits_for_a_settled_change() {
        use std::time::Instant;
        let (tx, rx) = mpsc::channel();
        let settled = Event::Changed { settled: true };
        let started = Instant::now();
        assert_eq!(debounce(&rx, settled), Some(1));
        assert!(started.elapsed() < DEBOUNCE, "a settled change is read at once");

        let unsettled = Event::Changed { settled: false };
        let started = Instant::now();
        assert_eq!(debounce(&rx, unsettled), Some(1));
        assert!(started.elapsed() >= DEBOUNCE, "an unsettled one waits for quiet");

        tx.send(unsettled).unwrap();
        tx.send(settled).unwrap();
        let started = Instant::now();
        assert_eq!(debounce(&rx, unsettled), Some(3), "queued changes are taken along");
        assert!(started.elapsed() < DEBOUNCE, "the last of them settled the write");

        tx.send(Event::Stop).unwrap();
        assert_eq!(debounce(&rx, unsettled), None);
    }
}
