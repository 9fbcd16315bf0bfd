//! Dashboard sessions: who is looking, proven once by a token and then by a cookie.
//!
//! The token itself is never kept in a page, a URL or the cookie: the cookie carries a
//! random session id, and the server keeps only the id's hash with the token's hash, so
//! every request re-checks that the token still belongs to the same owner (a revoked or
//! rotated token ends its sessions at once). Sessions live in memory; a restart asks for
//! the token again, which is the safe failure.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::core::monitor::engine::MonitorDef;
use crate::core::registry::Registry;
use crate::core::storage::TokenOwner;
use crate::core::token::{TokenHash, TokenKind};

/// Name of the session cookie.
pub const COOKIE: &str = "hartslag_session";

/// How long a login lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// Most sessions kept per principal; a principal's oldest goes first, so logins with one
/// token can neither exhaust memory nor push out anyone else's sessions.
const MAX_SESSIONS_PER_PRINCIPAL: usize = 50;

/// Errors of session handling.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The OS had no randomness for a session id.
    #[error("cannot create a session id: {0}")]
    Random(#[from] crate::core::token::TokenError),
}

/// What a logged-in viewer may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// Everything: every application and monitor.
    Admin,
    /// One application (`namespace/name`) and the monitors that reference it.
    Application(String),
}

impl Principal {
    /// Whether the viewer may see application `key`.
    pub fn sees_application(&self, key: &str) -> bool {
        match self {
            Principal::Admin => true,
            Principal::Application(own) => own == key,
        }
    }

    /// Whether the viewer may see a monitor.
    pub fn sees_monitor(&self, def: &MonitorDef) -> bool {
        match self {
            Principal::Admin => true,
            Principal::Application(own) => def.application() == Some(own.as_str()),
        }
    }

    /// The principal a token owner logs in as; heartbeat tokens do not open the dashboard.
    pub fn of_owner(owner: &TokenOwner) -> Option<Self> {
        match owner.kind {
            TokenKind::Admin => Some(Principal::Admin),
            TokenKind::Application => Some(Principal::Application(owner.key.clone())),
            TokenKind::Heartbeat => None,
        }
    }
}

struct Session {
    principal: Principal,
    token: TokenHash,
    csrf: String,
    created: Instant,
}

/// A resolved session: the viewer and the form token its POSTs must carry.
#[derive(Debug, Clone)]
pub struct Viewer {
    /// Who is looking.
    pub principal: Principal,
    /// Anti-CSRF token for this session's forms.
    pub csrf: String,
}

/// In-memory session table keyed by the hash of the cookie value.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<[u8; 32], Session>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").finish_non_exhaustive()
    }
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a session for the holder of `token`; returns the cookie value.
    pub fn create(&self, principal: Principal, token: TokenHash) -> Result<String, SessionError> {
        // 128 random bits each: the session id in the cookie, the form token in pages.
        let id = crate::core::token::random_id()?;
        let csrf = crate::core::token::random_id()?;
        let mut map = self.lock();
        map.retain(|_, s| s.created.elapsed() < SESSION_TTL);
        let mine: Vec<([u8; 32], Instant)> = map
            .iter()
            .filter(|(_, s)| s.principal == principal)
            .map(|(k, s)| (*k, s.created))
            .collect();
        if mine.len() >= MAX_SESSIONS_PER_PRINCIPAL
            && let Some((oldest, _)) = mine.iter().min_by_key(|(_, created)| *created)
        {
            map.remove(oldest);
        }
        map.insert(
            TokenHash::of(&id).0,
            Session {
                principal,
                token,
                csrf,
                created: Instant::now(),
            },
        );
        Ok(id)
    }

    /// Resolves a cookie value, checking expiry and that the token still has its owner.
    pub fn resolve(&self, cookie: &str, registry: &Registry) -> Option<Viewer> {
        let key = TokenHash::of(cookie).0;
        let mut map = self.lock();
        let s = map.get(&key)?;
        let still_valid = s.created.elapsed() < SESSION_TTL
            && registry
                .owner_of_hash(&s.token)
                .and_then(|o| Principal::of_owner(&o))
                .is_some_and(|p| p == s.principal);
        if !still_valid {
            map.remove(&key);
            return None;
        }
        Some(Viewer {
            principal: s.principal.clone(),
            csrf: s.csrf.clone(),
        })
    }

    /// Ends a session.
    pub fn remove(&self, cookie: &str) {
        self.lock().remove(&TokenHash::of(cookie).0);
    }
}

/// The session cookie's value among the request's cookies.
pub fn cookie_value(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|v| !v.is_empty())
}

/// The `Set-Cookie` value for a new session; `Secure` when the dashboard is served over
/// HTTPS (directly or behind a TLS-terminating proxy).
pub fn set_cookie(value: &str, secure: bool) -> String {
    format!(
        "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        SESSION_TTL.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that removes the session cookie.
pub fn clear_cookie(secure: bool) -> String {
    format!(
        "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        if secure { "; Secure" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue, header};

    #[test]
    fn cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; hartslag_session=abc ; b=2"),
        );
        assert_eq!(cookie_value(&h), Some("abc"));
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("hartslag_sessionx=1"),
        );
        assert_eq!(cookie_value(&h), None);
    }

    #[test]
    fn cookie_flags() {
        let c = set_cookie("v", true);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.ends_with("Secure"));
        assert!(!set_cookie("v", false).contains("Secure"));
        assert!(clear_cookie(false).contains("Max-Age=0"));
    }

    #[test]
    fn logins_with_one_token_do_not_push_out_other_sessions() {
        let sessions = Sessions::default();
        let admin = sessions
            .create(Principal::Admin, TokenHash::of("admin"))
            .unwrap();
        let app = Principal::Application("default/shop".into());
        let first = sessions.create(app.clone(), TokenHash::of("shop")).unwrap();
        for _ in 0..MAX_SESSIONS_PER_PRINCIPAL + 5 {
            sessions.create(app.clone(), TokenHash::of("shop")).unwrap();
        }
        let map = sessions.lock();
        assert_eq!(map.len(), MAX_SESSIONS_PER_PRINCIPAL + 1);
        assert!(
            map.contains_key(&TokenHash::of(&admin).0),
            "admin session kept"
        );
        assert!(
            !map.contains_key(&TokenHash::of(&first).0),
            "the oldest app session went"
        );
    }

    #[test]
    fn application_principal_sees_only_its_own() {
        let p = Principal::Application("default/shop".into());
        assert!(p.sees_application("default/shop"));
        assert!(!p.sees_application("default/other"));
        assert!(Principal::Admin.sees_application("x/y"));
        let heartbeat = TokenOwner {
            kind: TokenKind::Heartbeat,
            key: "default/job".into(),
        };
        assert_eq!(Principal::of_owner(&heartbeat), None);
    }
}
