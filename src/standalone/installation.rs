//! Two standalone installations on one database under the default name.
//!
//! A database records the installation that first opened it, and a replica of another
//! refuses it ([`crate::core::store_pg::claim`]). But every standalone installation given
//! no `--installation` is called `standalone`, so two of them pointed at one database
//! (a copied configuration, a staging and a production sharing a database server) pass
//! that check and become replicas of one installation: whichever leads declares its own
//! manifests, removing the other's Applications and replacing their tokens, and the other
//! does the same in turn after a failover.
//!
//! Nothing a replica can see tells that apart for certain from replicas of one
//! installation whose manifests or tokens changed (an edit rolled out, a token rotated),
//! which the leader must apply, so refusing would break those. So a replica that keeps the
//! default name compares, at start and before it writes anything, the Applications the
//! database holds with those its manifests declare, and the tokens of those in both with
//! its own, and says once what it would change and what that means if the database is
//! another installation's ([`warn_if_shared`]). An installation that names itself
//! (`--installation`) is not warned: another one under the same explicit name is a
//! mistake no comparison can see either, and its name was given on purpose.

use std::collections::BTreeSet;
use std::path::Path;

use crate::core::registry::{Registry, object_key};
use crate::core::storage::TokenOwner;
use crate::core::token::TokenKind;

use super::manifests::Manifests;
use super::tokens;

/// How the database's Applications differ from what this replica would declare, by key
/// (`namespace/name`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Differences {
    /// In the database, not in the manifests: the leader revokes their tokens.
    pub stored_only: Vec<String>,
    /// In the manifests, not in the database: the leader adds them.
    pub declared_only: Vec<String>,
    /// In both, with another token here than the database's (this replica's token file or
    /// the manifest's `tokenFile`): the leader replaces the database's token.
    pub other_token: Vec<String>,
}

impl Differences {
    /// Compares what `registry` holds with `m` (read from `manifests`) and the token files
    /// in `data`, writing nothing. A database that holds no Application differs in
    /// nothing: it is new, or this installation removed them all.
    pub fn of(registry: &Registry, m: &Manifests, manifests: &Path, data: &Path) -> Self {
        let stored: BTreeSet<String> = registry
            .applications()
            .iter()
            .map(|a| a.key.clone())
            .collect();
        if stored.is_empty() {
            return Self::default();
        }
        let declared: BTreeSet<String> = m
            .applications
            .iter()
            .map(|a| object_key(&a.namespace, &a.name))
            .collect();
        let other_token = m
            .applications
            .iter()
            .filter_map(|app| {
                let key = object_key(&app.namespace, &app.name);
                if !stored.contains(&key) {
                    return None;
                }
                let path = match app.spec.token_file.as_deref() {
                    Some(file) => manifests.join(file),
                    None => tokens::token_path(data, "application", &app.name),
                };
                // No token here (or none readable): the leader issues one or fails on it,
                // as it would anyway; nothing to compare.
                let token = tokens::read_token(&path).ok().flatten()?;
                let owner = TokenOwner {
                    kind: TokenKind::Application,
                    key,
                };
                (registry.owner_of_hash(&token.hash()).as_ref() != Some(&owner))
                    .then_some(owner.key)
            })
            .collect();
        Self {
            stored_only: stored.difference(&declared).cloned().collect(),
            declared_only: declared.difference(&stored).cloned().collect(),
            other_token,
        }
    }

    /// Whether this replica would change nothing of the database's Applications.
    pub fn is_empty(&self) -> bool {
        self.stored_only.is_empty() && self.declared_only.is_empty() && self.other_token.is_empty()
    }

    /// The differences in words, each list cut at a few names.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (keys, what) in [
            (
                &self.stored_only,
                "the database holds, these manifests do not declare, and the leader would revoke the tokens of",
            ),
            (
                &self.declared_only,
                "these manifests declare and the database does not hold",
            ),
            (
                &self.other_token,
                "the database holds with another token than this replica's, which the leader would replace",
            ),
        ] {
            if !keys.is_empty() {
                parts.push(format!("Applications {what}: {}", names(keys)));
            }
        }
        parts.join("; ")
    }
}

/// Most names a list in the warning shows.
const SHOWN: usize = 5;

/// `a, b, c and 4 more`.
fn names(keys: &[String]) -> String {
    let shown: Vec<&str> = keys.iter().take(SHOWN).map(String::as_str).collect();
    match keys.len().saturating_sub(SHOWN) {
        0 => shown.join(", "),
        more => format!("{} and {more} more", shown.join(", ")),
    }
}

/// Logs one warning when the database, which belongs to `installation` (the default name,
/// not given), holds Applications that differ from what this replica would declare
/// ([`Differences`]); returns them.
pub fn warn_if_shared(
    registry: &Registry,
    installation: &str,
    m: &Manifests,
    manifests: &Path,
    data: &Path,
) -> Differences {
    let differences = Differences::of(registry, m, manifests, data);
    if !differences.is_empty() {
        tracing::warn!(
            installation,
            differences = %differences.describe(),
            "this replica keeps the default installation name {installation:?}, which every standalone installation given no --installation has, and the database's Applications are not what its manifests declare. If another standalone installation uses this database, the two remove each other's Applications and replace each other's tokens whenever one of them leads: stop this replica, and give each installation a database of its own and its own --installation (HARTSLAG_INSTALLATION). If the manifests or tokens changed on purpose, this is expected and the leader applies them; --installation {installation:?} says so and silences this warning"
        );
    }
    differences
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_list_is_cut_and_says_how_many_more() {
        let keys: Vec<String> = (0..8).map(|i| format!("default/app-{i}")).collect();
        let d = Differences {
            stored_only: keys,
            declared_only: Vec::new(),
            other_token: vec!["default/shop".into()],
        };
        assert_eq!(
            d.describe(),
            "Applications the database holds, these manifests do not declare, and the leader would revoke the tokens of: default/app-0, default/app-1, default/app-2, default/app-3, default/app-4 and 3 more; Applications the database holds with another token than this replica's, which the leader would replace: default/shop"
        );
        assert!(!d.is_empty());
        assert!(Differences::default().is_empty());
    }
}
