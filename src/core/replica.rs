//! One replica among several that share a database: what it does according to whether
//! it leads ([`Fence`]).
//!
//! Every replica takes pings. The one that leads applies them in its engine; the others
//! post them to the relay and answer once the post is durable, and the leader's relay
//! pump applies them ([`spawn_relay_pump`]). A replica that does not lead shows the
//! leader's rounds ([`Mirror`]) and the applications the leader defined
//! ([`spawn_app_refresh`]). Each of these waits for the backend's change signal and also
//! polls every [`POLL`]: a notification sent while a listening connection was down is
//! lost.
//!
//! The embedded backend serves one process, which always leads: none of this runs there.

use std::sync::Arc;
use std::time::Duration;

use super::monitor::engine::{Engine, EngineError, PingInput, PingOutcome};
use super::monitor::state::State;
use super::registry::Registry;
use super::storage::{AppStore, Fence, MonitorFeed, PingRelay, Signal, StorageError};

/// How often a reader polls besides waiting for the change signal.
pub const POLL: Duration = Duration::from_secs(1);

/// Most relayed pings applied in one round.
const RELAY_BATCH: usize = 512;

/// Why a ping was not taken.
#[derive(Debug, thiserror::Error)]
pub enum PingError {
    /// No monitor under the key.
    #[error("heartbeat not found")]
    NotFound,
    /// Neither the engine nor the relay could take it; the client should retry.
    #[error("{0}")]
    Unavailable(String),
}

/// How this replica takes pings. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Replica {
    fence: Fence,
    engine: Engine,
    relay: Option<Arc<dyn PingRelay>>,
}

impl Replica {
    /// A replica leading while `fence` says so, posting pings to `relay` while it does
    /// not (without a relay, it always applies them itself).
    pub fn new(fence: Fence, engine: Engine, relay: Option<Arc<dyn PingRelay>>) -> Self {
        Self {
            fence,
            engine,
            relay,
        }
    }

    /// Whether this replica leads (its engine writes rounds).
    pub fn leads(&self) -> bool {
        self.fence.generation().is_some()
    }

    /// Takes a ping for monitor `key`: applied in the engine where this replica leads,
    /// posted to the relay where it does not. Resolves once it is durable either way,
    /// with what the monitor's state (here: as this replica shows it) tells the sender.
    pub async fn ping(&self, key: &str, input: PingInput) -> Result<PingOutcome, PingError> {
        let Some(relay) = self.relay.as_ref().filter(|_| !self.leads()) else {
            return match self.engine.ping(key, input).await {
                Ok(outcome) => Ok(outcome),
                Err(EngineError::NotFound) => Err(PingError::NotFound),
                // Deposed between the check and the engine (the process is about to stop):
                // the client retries, with a replica that relays it or the new leader.
                Err(e) => Err(PingError::Unavailable(e.to_string())),
            };
        };
        let paused = self
            .engine
            .view(|all| all.get(key).map(|m| m.state.state == State::Paused))
            .ok_or(PingError::NotFound)?;
        let at = self.engine.clock().now();
        relay
            .post(key.to_string(), at, input)
            .await
            .map_err(|e| PingError::Unavailable(e.to_string()))?;
        Ok(if paused {
            PingOutcome::Paused
        } else {
            PingOutcome::Ok
        })
    }
}

/// Waits until `signal` is raised or [`POLL`] has passed.
async fn wait(signal: &Signal) {
    let _ = tokio::time::timeout(POLL, signal.notified()).await;
}

/// While this replica leads, applies the pings other replicas relayed, oldest first, a
/// batch per round. Each batch is read afresh from the relay once the round that applied
/// the one before is durable (and removed those from the relay), so a ping posted in a
/// transaction that committed after a newer one's is not passed over.
pub fn spawn_relay_pump(fence: Fence, engine: Engine, relay: Arc<dyn PingRelay>) {
    let signal = relay.signal();
    tokio::spawn(async move {
        loop {
            if fence.generation().is_none() {
                wait(&signal).await;
                continue;
            }
            let failed = match relay.take(0, RELAY_BATCH).await {
                Ok(batch) if batch.is_empty() => {
                    wait(&signal).await;
                    continue;
                }
                Ok(batch) => engine
                    .apply_relayed(batch)
                    .await
                    .err()
                    .map(|e| e.to_string()),
                Err(StorageError::Stopped) => return,
                Err(e) => Some(e.to_string()),
            };
            if let Some(e) = failed {
                tracing::warn!(error = %e, "applying relayed pings failed; retrying");
                tokio::time::sleep(POLL).await;
            }
        }
    });
}

/// While this replica does not lead, refreshes the applications its registry knows from
/// the store whenever one may have changed: the leader defines them (and their tokens).
pub fn spawn_app_refresh(
    fence: Fence,
    registry: Registry,
    apps: Arc<dyn AppStore>,
    signal: Signal,
) {
    tokio::spawn(async move {
        loop {
            wait(&signal).await;
            if fence.generation().is_some() {
                continue;
            }
            match apps.load_apps().await {
                Ok(records) => registry.sync_applications(records),
                Err(StorageError::Stopped) => return,
                Err(e) => tracing::warn!(error = %e, "refreshing the applications failed"),
            }
        }
    });
}

/// The leader's rounds, shown by a replica that does not lead: its engine's monitors and
/// its registry's ping tokens follow what the leader writes.
#[derive(Debug)]
pub struct Mirror {
    engine: Engine,
    registry: Registry,
    feed: Arc<dyn MonitorFeed>,
    /// The version of the newest round shown.
    version: tokio::sync::Mutex<u64>,
}

impl Mirror {
    /// A mirror of `feed` whose engine shows every round up to `version`.
    pub fn new(
        engine: Engine,
        registry: Registry,
        feed: Arc<dyn MonitorFeed>,
        version: u64,
    ) -> Self {
        Self {
            engine,
            registry,
            feed,
            version: tokio::sync::Mutex::new(version),
        }
    }

    /// Shows every round written so far. A replica taking over calls it once the
    /// deposed leader can write no more and before its fence leads: its engine then
    /// builds on every round the deposed leader wrote.
    pub async fn catch_up(&self) -> Result<(), StorageError> {
        let mut version = self.version.lock().await;
        let changes = self.feed.changes_since(*version).await?;
        let next = changes.version;
        let empty = changes.monitors.is_empty() && changes.removed.is_empty();
        if !empty || changes.everything {
            let tokens = self
                .engine
                .mirror(changes)
                .await
                .map_err(|_| StorageError::Stopped)?;
            self.registry
                .index_monitor_tokens(&tokens.dropped, &tokens.added);
        }
        *version = next.max(*version);
        Ok(())
    }

    /// Catches up whenever a round may have been written, for as long as this replica
    /// does not lead.
    pub fn spawn(self: Arc<Self>, fence: Fence) {
        let signal = self.feed.signal();
        tokio::spawn(async move {
            while fence.generation().is_none() {
                match self.catch_up().await {
                    Ok(()) => {}
                    Err(StorageError::Stopped) => return,
                    Err(e) => tracing::warn!(error = %e, "reading the leader's rounds failed"),
                }
                wait(&signal).await;
            }
        });
    }
}
