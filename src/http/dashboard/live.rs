//! The live stream: server-sent events that tell open pages when a monitor the viewer sees
//! changes state, so they refresh within a second instead of polling.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use tokio::sync::broadcast::error::RecvError;

use super::session::{self, Principal};
use crate::core::monitor::engine::Change;
use crate::http::HttpState;

/// How often an idle live stream re-checks its session.
const LIVE_RECHECK: Duration = Duration::from_secs(5);

struct LiveStream {
    rx: tokio::sync::broadcast::Receiver<Change>,
    closing: tokio::sync::watch::Receiver<bool>,
    principal: Principal,
    cookie: String,
    st: HttpState,
}

/// A `change` event whenever a monitor the viewer sees changes state (`*` when some were
/// missed). The session is re-checked on every event and every few seconds: logout,
/// expiry or a revoked token end the stream too.
pub async fn live(State(st): State<HttpState>, headers: HeaderMap) -> Response {
    let Some((cookie, viewer)) = session::cookie_value(&headers).and_then(|c| {
        let viewer = st.dashboard.sessions.resolve(c, &st.core.registry)?;
        Some((c.to_string(), viewer))
    }) else {
        return (StatusCode::UNAUTHORIZED, "log in first").into_response();
    };
    let stream_state = LiveStream {
        rx: st.core.engine.subscribe(),
        closing: st.dashboard.closing.subscribe(),
        principal: viewer.principal,
        cookie,
        st,
    };
    let stream = futures::stream::unfold(stream_state, |mut ls| async move {
        ls.next_event().await.map(|e| (Ok::<_, Infallible>(e), ls))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

impl LiveStream {
    /// The next event to send; `None` ends the stream.
    async fn next_event(&mut self) -> Option<Event> {
        loop {
            if *self.closing.borrow_and_update() {
                return None;
            }
            let received = tokio::select! {
                r = self.rx.recv() => Some(r),
                _ = self.closing.changed() => return None,
                _ = tokio::time::sleep(LIVE_RECHECK) => None,
            };
            if !self.session_still_valid() {
                return None;
            }
            match received {
                None => continue,
                Some(Ok(change)) if self.sees(&change) => {
                    let data = format!("{} {}", change.key, change.to.as_str());
                    return Some(Event::default().event("change").data(data));
                }
                Some(Ok(_)) => continue,
                Some(Err(RecvError::Lagged(_))) => {
                    return Some(Event::default().event("change").data("*"));
                }
                Some(Err(RecvError::Closed)) => return None,
            }
        }
    }

    fn session_still_valid(&self) -> bool {
        let viewer = self
            .st
            .dashboard
            .sessions
            .resolve(&self.cookie, &self.st.core.registry);
        viewer.map(|v| v.principal).as_ref() == Some(&self.principal)
    }

    fn sees(&self, change: &Change) -> bool {
        match &self.principal {
            Principal::Admin => true,
            Principal::Application(_) => self
                .st
                .core
                .engine
                .get(&change.key)
                .is_some_and(|m| self.principal.sees_monitor(&m.def)),
        }
    }
}
