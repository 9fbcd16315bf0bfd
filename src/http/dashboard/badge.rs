//! Status badges: a small SVG per monitor for READMEs and wikis.
//!
//! A badge URL is public by nature (it ends up in a README), so it must not carry the ping
//! token: its key is derived one-way from the token's hash. Knowing a badge key reveals
//! neither the token nor anything that can ping, and the key changes when the token is
//! rotated, which retires old badge URLs along with the old token.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::chart::escape_html;
use crate::core::monitor::engine::Engine;
use crate::core::monitor::state::State;
use crate::core::token::TokenHash;

/// The badge key of a monitor whose ping token hashes to `token`.
pub fn badge_key(token: &TokenHash) -> String {
    let mut h = Sha256::new();
    h.update(b"hartslag-badge-v1:");
    h.update(token.0);
    hex::encode(&h.finalize()[..12])
}

/// Badge key → monitor key, rebuilt from the engine when a key is not found (at most
/// every few seconds, so unknown keys cannot make every request rebuild it). A monitor's
/// page adds its own badge at once ([`Self::note`]), so the URL it shows works even before
/// the next rebuild.
#[derive(Default)]
pub struct BadgeIndex {
    inner: RwLock<(Option<Instant>, HashMap<String, String>)>,
}

impl std::fmt::Debug for BadgeIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BadgeIndex").finish_non_exhaustive()
    }
}

const REBUILD_EVERY: Duration = Duration::from_secs(5);

impl BadgeIndex {
    /// The monitor key a badge key belongs to.
    pub fn lookup(&self, engine: &Engine, key: &str) -> Option<String> {
        {
            let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
            if let Some(found) = inner.1.get(key) {
                return Some(found.clone());
            }
            if inner.0.is_some_and(|at| at.elapsed() < REBUILD_EVERY) {
                return None;
            }
        }
        // Only the tokens are read under the engine's lock; hashing a million of them
        // there would hold up the engine for a good part of a second.
        let tokens: Vec<(TokenHash, String)> = engine.view(|all| {
            all.values()
                .map(|m| (m.def.token, m.def.key.clone()))
                .collect()
        });
        let map: HashMap<String, String> = tokens
            .into_iter()
            .map(|(token, monitor)| (badge_key(&token), monitor))
            .collect();
        let found = map.get(key).cloned();
        *self.inner.write().unwrap_or_else(|p| p.into_inner()) = (Some(Instant::now()), map);
        found
    }

    /// Adds the badge of monitor `monitor` whose token hashes to `token`; returns its key.
    pub fn note(&self, token: &TokenHash, monitor: &str) -> String {
        let key = badge_key(token);
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if inner.1.get(&key).map(String::as_str) != Some(monitor) {
            inner.1.insert(key.clone(), monitor.to_string());
        }
        key
    }
}

/// Approximate text width in pixels at 11 px Verdana (the badge convention), so the
/// badge needs no font metrics at run time.
fn text_width(text: &str) -> u32 {
    text.chars()
        .map(|c| match c {
            'i' | 'l' | 'j' | '.' | ',' | ':' | '|' | '!' | '\'' => 4,
            'm' | 'w' | 'M' | 'W' => 10,
            c if c.is_ascii_uppercase() => 8,
            _ => 7,
        })
        .sum()
}

/// The colour of a state on a badge; the badge always spells the state out as well.
fn state_colour(state: State) -> &'static str {
    match state {
        State::Up => "#2e7d32",
        State::Started => "#1565c0",
        State::Late => "#b26a00",
        State::Down => "#c62828",
        State::New | State::Paused => "#616161",
    }
}

/// Most characters of a label shown: a badge sits in READMEs and status pages, and a
/// name of hundreds of characters made it thousands of pixels wide.
const LABEL_CHARS: usize = 40;

/// A flat two-part badge: `label | state`; a long label is cut with `…` (the title and
/// the accessible name keep it whole).
pub fn render(label: &str, state: State) -> String {
    let value = state.as_str();
    let whole = escape_html(label);
    let shown: String = if label.chars().count() > LABEL_CHARS {
        label.chars().take(LABEL_CHARS - 1).chain(['…']).collect()
    } else {
        label.to_string()
    };
    let lw = text_width(&shown) + 12;
    let vw = text_width(value) + 12;
    let total = lw + vw;
    let label = escape_html(&shown);
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{total}" height="20" role="img" aria-label="{whole}: {value}"><title>{whole}: {value}</title><rect width="{lw}" height="20" fill="#555"/><rect x="{lw}" width="{vw}" height="20" fill="{colour}"/><g fill="#fff" font-family="Verdana,DejaVu Sans,sans-serif" font-size="11" text-anchor="middle"><text x="{lx}" y="14">{label}</text><text x="{vx}" y="14">{value}</text></g></svg>"##,
        colour = state_colour(state),
        lx = lw / 2,
        vx = lw + vw / 2,
    )
}

/// The badge shown for a key that matches no monitor (deleted, or the token rotated).
pub fn render_unknown() -> String {
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="120" height="20" role="img" aria-label="heartbeat: unknown"><title>heartbeat: unknown</title><rect width="70" height="20" fill="#555"/><rect x="70" width="50" height="20" fill="#9e9e9e"/><g fill="#fff" font-family="Verdana,DejaVu Sans,sans-serif" font-size="11" text-anchor="middle"><text x="35" y="14">heartbeat</text><text x="95" y="14">{}</text></g></svg>"##,
        "unknown"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_stable_and_does_not_contain_the_token() {
        let token = "hsh_secretsecretsecret";
        let h = TokenHash::of(token);
        let k = badge_key(&h);
        assert_eq!(k, badge_key(&h));
        assert_eq!(k.len(), 24);
        assert!(!k.contains(&hex::encode(h.0)[..8]));
        assert_ne!(k, badge_key(&TokenHash::of("hsh_other")));
    }

    #[test]
    fn badge_spells_out_the_state() {
        let svg = render("backup <db>", State::Down);
        assert!(svg.contains(">Down<"));
        assert!(svg.contains("backup &lt;db&gt;"));
        assert!(svg.contains("#c62828"));
    }

    #[test]
    fn a_long_label_is_cut_on_the_badge_and_kept_whole_in_its_title() {
        let name = "w".repeat(255);
        let svg = render(&name, State::Up);
        let width: u32 = svg
            .split("width=\"")
            .nth(1)
            .and_then(|w| w.split('"').next())
            .and_then(|w| w.parse().ok())
            .unwrap();
        assert!(width < 500, "{width} px wide");
        assert!(svg.contains(&format!("<title>{name}: Up</title>")));
        assert!(svg.contains(&format!(">{}…<", "w".repeat(39))));
        let short = render("backup", State::Up);
        assert!(short.contains(">backup<"));
    }
}
