//! Standalone alert channels: the manifests' `AlertChannel` and `ClusterAlertChannel`
//! documents, their `...File` secrets read (relative to the manifests directory), handed to
//! the core; and the channels a Heartbeat names, resolved as the operator resolves them.

use std::path::Path;

use crate::core::alert::channels::{
    ChannelBook, ChannelRef, ResolvedChannel, SecretSource, channel_names, resolve_names,
};
use crate::core::registry::AppInfo;
use crate::core::spec::HeartbeatSpec;

use super::manifests::Manifests;

/// A channel whose secret file cannot be read, or names a Heartbeat cannot resolve.
#[derive(Debug, thiserror::Error)]
pub enum ChannelsError {
    /// A channel could not be resolved.
    #[error("{channel}: {source}")]
    Resolve {
        /// Which channel.
        channel: ChannelRef,
        /// Why.
        source: crate::core::alert::channels::ResolveError,
    },
    /// A Heartbeat names a channel no document defines.
    #[error("Heartbeat {heartbeat}: {source} (ChannelNotFound)")]
    NotFound {
        /// Which Heartbeat.
        heartbeat: String,
        /// Which name.
        source: crate::core::alert::channels::ChannelNotFound,
    },
}

/// Reads every channel document of `m` (secret files relative to `dir`) and hands the
/// whole set to `book`, replacing what it held.
pub fn load(book: &ChannelBook, m: &Manifests, dir: &Path) -> Result<(), ChannelsError> {
    let read = |src: SecretSource<'_>| match src {
        SecretSource::File(f) => {
            let path = dir.join(f);
            std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))
        }
        SecretSource::Ref(_) => Err("Secret references are for Kubernetes".to_string()),
    };
    let namespaced = m
        .channels
        .iter()
        .map(|c| (ChannelRef::namespaced(&c.namespace, &c.name), &c.spec));
    let cluster = m
        .cluster_channels
        .iter()
        .map(|c| (ChannelRef::cluster(&c.name), &c.spec));
    let mut resolved = Vec::new();
    for (id, spec) in namespaced.chain(cluster) {
        let channel = ResolvedChannel::resolve(id.clone(), spec, read).map_err(|source| {
            ChannelsError::Resolve {
                channel: id,
                source,
            }
        })?;
        resolved.push(channel);
    }
    book.replace_all(resolved);
    Ok(())
}

/// The channels Heartbeat `name` alerts through.
pub fn of_heartbeat(
    book: &ChannelBook,
    namespace: &str,
    name: &str,
    spec: &HeartbeatSpec,
    app: Option<&AppInfo>,
) -> Result<Vec<ChannelRef>, ChannelsError> {
    let names = channel_names(
        spec.alerts.as_ref(),
        app.and_then(|a| a.spec.alerts.as_ref()),
    );
    resolve_names(namespace, names, |r| book.contains(r)).map_err(|source| {
        ChannelsError::NotFound {
            heartbeat: name.to_string(),
            source,
        }
    })
}
