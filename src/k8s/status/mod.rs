//! Status of the custom resources: computed as data from one source of truth and applied
//! by one writer.
//!
//! - [`model`] decides what a status should say (pure functions of the reconciler's
//!   verdict, the monitor engine, the live object and the time).
//! - [`writer`] is the only code that writes status. Reconcilers hand it their verdicts,
//!   the engine its transitions, a periodic sweep the coarse refreshes; it compares each
//!   desired status with the live object from the watch cache and writes only the
//!   difference.
//! - [`channel`] does the same for alert channels.
//! - [`apply`] sends a status by server-side apply with field manager `hartslag`, so a
//!   field that becomes empty disappears from the object.

pub mod apply;
pub mod channel;
pub mod model;
pub mod writer;

use std::time::Duration;

pub use model::{Outcome, Refusal, Verdict};
pub use writer::{Lane, Nudge, StatusQueue};

/// Field manager of every status write (server-side apply).
pub const MANAGER: &str = "hartslag";

/// The kinds whose status the writer owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `Application`.
    Application,
    /// `Heartbeat`.
    Heartbeat,
    /// `AlertChannel`.
    AlertChannel,
    /// `ClusterAlertChannel` (cluster-scoped: its target's namespace is empty).
    ClusterAlertChannel,
}

impl Kind {
    /// The kind's name, as Kubernetes spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Application => "Application",
            Self::Heartbeat => "Heartbeat",
            Self::AlertChannel => "AlertChannel",
            Self::ClusterAlertChannel => "ClusterAlertChannel",
        }
    }
}

/// One custom resource, by kind, namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    /// Its kind.
    pub kind: Kind,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl Target {
    /// A Heartbeat.
    pub fn heartbeat(namespace: &str, name: &str) -> Self {
        Self {
            kind: Kind::Heartbeat,
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// An Application.
    pub fn application(namespace: &str, name: &str) -> Self {
        Self {
            kind: Kind::Application,
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// An AlertChannel.
    pub fn alert_channel(namespace: &str, name: &str) -> Self {
        Self {
            kind: Kind::AlertChannel,
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// A ClusterAlertChannel.
    pub fn cluster_alert_channel(name: &str) -> Self {
        Self {
            kind: Kind::ClusterAlertChannel,
            namespace: String::new(),
            name: name.into(),
        }
    }

    /// The `namespace/name` key the core uses.
    pub fn key(&self) -> String {
        crate::core::registry::object_key(&self.namespace, &self.name)
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind.as_str(), self.name)
        } else {
            write!(f, "{} {}/{}", self.kind.as_str(), self.namespace, self.name)
        }
    }
}

/// Writer settings.
#[derive(Debug, Clone, Copy)]
pub struct WriterConfig {
    /// Most status writes per second for state changes and refreshes (answers to spec
    /// changes are not counted: they follow the user's own writes).
    pub max_per_sec: u32,
    /// How often coarse facts (last ping, counts) are looked at; each object's are
    /// refreshed at most this often.
    pub refresh: Duration,
    /// Status writes in flight at once.
    pub concurrency: usize,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            max_per_sec: 20,
            refresh: Duration::from_secs(60),
            concurrency: 8,
        }
    }
}
