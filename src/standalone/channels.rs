//! Standalone alert channels: the manifests' `AlertChannel` and `ClusterAlertChannel`
//! documents, their `...File` secrets read (relative to the manifests directory), handed to
//! the core; and the channels a Heartbeat names, resolved as the operator resolves them.

use std::path::Path;

use crate::core::alert::channels::{
    ChannelBook, ChannelRef, ResolvedChannel, SecretSource, channel_names, resolve_names,
};
use crate::core::channel::Secrets;
use crate::core::registry::AppInfo;
use crate::core::spec::HeartbeatSpec;
use crate::notify::channel::check_addresses;
use crate::notify::guard::AddressPolicy;

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
    /// A channel posts to an address the server refuses to post alerts to
    /// (`--allow-private-webhooks`, `--webhook-allowed-cidrs`): each delivery would fail.
    #[error("{source_file}: {channel}: {source}")]
    AddressRefused {
        /// The manifest file defining the channel.
        source_file: String,
        /// Which channel.
        channel: ChannelRef,
        /// Which field, and why (boxed: a rare error keeps the `Result` small).
        source: Box<crate::notify::channel::AddressRefused>,
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
/// whole set to `book`, replacing what it held. A channel posting to an address `policy`
/// refuses whatever DNS says (loopback, link-local, ... written as such) stops the load,
/// naming its file, its field and the flags that would allow it: its every delivery would
/// be refused, and nobody would learn it before an alert was lost.
pub fn load(
    book: &ChannelBook,
    m: &Manifests,
    dir: &Path,
    policy: &AddressPolicy,
) -> Result<(), ChannelsError> {
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
        .map(|c| (ChannelRef::namespaced(&c.namespace, &c.name), c));
    let cluster = m
        .cluster_channels
        .iter()
        .map(|c| (ChannelRef::cluster(&c.name), c));
    let mut resolved = Vec::new();
    for (id, doc) in namespaced.chain(cluster) {
        let channel = ResolvedChannel::resolve(id.clone(), &doc.spec, read).map_err(|source| {
            ChannelsError::Resolve {
                channel: id.clone(),
                source,
            }
        })?;
        check_addresses(policy, &doc.spec, &channel, Secrets::Files).map_err(|source| {
            ChannelsError::AddressRefused {
                source_file: doc.source.display().to_string(),
                channel: id,
                source: Box::new(source),
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
