//! Dead-man's-switch pings (Tickstem compatible, spec section 2) and the monitor status
//! listing. The token in the path is the credential; unknown and deleted tokens answer
//! alike.

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use crate::core::monitor::engine::{Monitor, PingInput, PingKind, PingOutcome};
use crate::core::monitor::state;
use crate::core::replica::PingError;
use crate::core::token::TokenKind;
use crate::http::HttpState;
use crate::http::auth::bearer;
use crate::http::body::read_head;
use crate::http::error::{ApiError, json_body};
use crate::http::path::Segment;

/// Longest ping body kept (a job's last log lines).
pub const MAX_PING_BODY: usize = 10 * 1024;
/// Longest ping body read: a job that posts its whole log has its ping recorded, with the
/// log's first [`MAX_PING_BODY`] bytes; the rest is read and dropped.
pub const MAX_PING_UPLOAD: usize = 16 * 1024 * 1024;
/// Longest user agent kept.
pub const MAX_USER_AGENT: usize = 200;

/// Routes of this family.
pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/v1/heartbeats/{token}/ping", get(ping).post(ping))
        .route("/v1/heartbeats/{token}/start", get(start).post(start))
        .route("/v1/heartbeats/{token}/fail", get(fail).post(fail))
        .route("/v1/status", get(status))
}

pub(super) fn not_found() -> Response {
    ApiError::new(StatusCode::NOT_FOUND, "heartbeat not found").into_response()
}

fn truncate(s: &str, max_bytes: usize) -> String {
    if s.len() <= max_bytes {
        return s.to_string();
    }
    let mut end = max_bytes;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// The client's address: the connection's peer, or, when the peer is one of the
/// `trusted` proxies, the nearest address in `X-Forwarded-For` that is not one of them
/// (read from the right: entries further left were written by the client itself or by
/// proxies nobody vouches for). Without trusted proxies the header is ignored, so a client
/// cannot write its own source into a monitor's history.
pub(super) fn source(
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    trusted: &[ipnet::IpNet],
) -> Option<String> {
    let peer = peer?.ip().to_canonical();
    let is_trusted =
        |ip: std::net::IpAddr| trusted.iter().any(|net| net.contains(&ip.to_canonical()));
    if !is_trusted(peer) {
        return Some(address_text(peer));
    }
    let mut hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    let mut client = address_text(peer);
    while let Some(hop) = hops.pop() {
        match hop.parse::<std::net::IpAddr>() {
            Ok(ip) if is_trusted(ip) => client = address_text(ip.to_canonical()),
            Ok(ip) => return Some(address_text(ip.to_canonical())),
            // Not an address (a name, "unknown", garbage): nothing further left is vouched for.
            Err(_) => return Some(client),
        }
    }
    Some(client)
}

/// An address as `Display` writes it. IPv4, the common case, is written digit by digit:
/// through `Display` it took about 2.5 % of the server's CPU per ping in the ingest
/// benchmark, for one address.
fn address_text(ip: std::net::IpAddr) -> String {
    let std::net::IpAddr::V4(v4) = ip else {
        return ip.to_string();
    };
    let mut text = String::with_capacity(15);
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text.push('.');
        }
        if octet >= 100 {
            text.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            text.push(char::from(b'0' + octet / 10 % 10));
        }
        text.push(char::from(b'0' + octet % 10));
    }
    text
}

async fn receive(
    state: HttpState,
    token: String,
    kind: PingKind,
    params: HashMap<String, String>,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    body: Body,
) -> Response {
    let Some(key) = monitor_of(&state, &token).await else {
        return not_found();
    };
    let input = match ping_input(&state, kind, &params, headers, peer, body).await {
        Ok(input) => input,
        Err(e) => return e.into_response(),
    };
    record(&state, &key, input).await
}

/// The monitor a ping token belongs to (on a replica that does not lead, one the leader
/// has defined a moment ago too).
pub(super) async fn monitor_of(state: &HttpState, token: &str) -> Option<String> {
    state.core.monitor_for_ping_token(token).await
}

/// Applies a ping to the monitor under `key` and answers as the ping routes do.
pub(super) async fn record(state: &HttpState, key: &str, input: PingInput) -> Response {
    match state.core.ping(key, input).await {
        Ok(PingOutcome::Ok) => json_body(StatusCode::OK, r#"{"status":"ok"}"#),
        Ok(PingOutcome::Paused) => json_body(StatusCode::OK, r#"{"status":"paused"}"#),
        Err(PingError::NotFound) => not_found(),
        Err(e) => {
            tracing::error!(error = %e, monitor = %key, "ping not recorded");
            let what = "the ping could not be recorded";
            match e {
                PingError::Storage(e) => ApiError::storage(what, &e).into_response(),
                _ => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("{what}; retry"))
                    .into_response(),
            }
        }
    }
}

/// What the ping tells and what is kept of it: a non-zero `exit_code` makes it a failure,
/// and the body, user agent and client address are cut to their limits.
async fn ping_input(
    state: &HttpState,
    kind: PingKind,
    params: &HashMap<String, String>,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    body: Body,
) -> Result<PingInput, ApiError> {
    let exit_code = failure_code(params)?;
    let bytes = read_head(
        body,
        MAX_PING_BODY,
        MAX_PING_UPLOAD.max(state.max_body_bytes),
        state.limits.body_timeout,
    )
    .await?;
    let body =
        (!bytes.is_empty()).then(|| truncate(&String::from_utf8_lossy(&bytes), MAX_PING_BODY));
    let user_agent = user_agent(headers);
    Ok(PingInput {
        kind: if exit_code.is_some() {
            PingKind::Fail
        } else {
            kind
        },
        exit_code,
        source: source(headers, peer, &state.trusted_proxies),
        user_agent,
        body,
        rid: run_id(params)?,
        stopped_alert: None,
    })
}

/// Longest run id kept (`?rid=`): a Kubernetes name is at most 253 characters.
pub const MAX_RUN_ID: usize = 253;

/// The `rid` parameter: the run a ping belongs to (a Job's or Pod's name), so a
/// `requirePing` monitor ties it to its Job even when runs overlap.
fn run_id(params: &HashMap<String, String>) -> Result<Option<String>, ApiError> {
    match params.get("rid").map(|r| r.trim()) {
        None | Some("") => Ok(None),
        Some(r) if r.len() <= MAX_RUN_ID && !r.chars().any(char::is_control) => {
            Ok(Some(r.to_string()))
        }
        Some(_) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("rid must be at most {MAX_RUN_ID} characters without control characters"),
        )),
    }
}

/// The `exit_code` parameter when it reports a failure (1–255); 0 or none is no failure.
fn failure_code(params: &HashMap<String, String>) -> Result<Option<u8>, ApiError> {
    let Some(raw) = params.get("exit_code") else {
        return Ok(None);
    };
    match raw.trim().parse::<u8>() {
        Ok(0) => Ok(None),
        Ok(code) => Ok(Some(code)),
        Err(_) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("exit_code must be an integer from 0 to 255, got {raw:?}"),
        )),
    }
}

/// A request's headers, the client's address and the body.
pub(super) fn split(req: Request) -> (HeaderMap, Option<SocketAddr>, Body) {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let (parts, body) = req.into_parts();
    (parts.headers, peer, body)
}

/// The `User-Agent` header, cut to [`MAX_USER_AGENT`] characters.
pub(super) fn user_agent(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|ua| ua.chars().take(MAX_USER_AGENT).collect())
}

macro_rules! ping_handler {
    ($name:ident, $kind:expr) => {
        async fn $name(
            State(s): State<HttpState>,
            Segment(t): Segment,
            Query(q): Query<HashMap<String, String>>,
            req: Request,
        ) -> Response {
            let (headers, peer, body) = split(req);
            receive(s, t, $kind, q, &headers, peer, body).await
        }
    };
}

ping_handler!(ping, PingKind::Success);
ping_handler!(start, PingKind::Start);
ping_handler!(fail, PingKind::Fail);

/// The status view of one monitor.
pub fn monitor_json(m: &Monitor, now: jiff::Timestamp) -> Value {
    let timing = m.def.timing();
    json!({
        "name": m.def.name(),
        "namespace": m.def.namespace(),
        "application": m.def.application().map(|a| a.rsplit('/').next().unwrap_or(a)),
        "display_name": m.def.display_name(),
        "state": m.state.state.as_str(),
        "status": m.state.state.tickstem_status(),
        "since": m.state.since.to_string(),
        // The last success (Tickstem's sense of a ping); the others say what else came.
        "last_ping_at": m.state.last_ping_at.map(|t| t.to_string()),
        "last_failure_at": m.state.last_fail_at.map(|t| t.to_string()),
        "last_signal_at": m.state.last_signal_at().map(|t| t.to_string()),
        "next_due_at": m.state.next_expected_at().map(|t| t.to_string()),
        "consecutive_misses": state::consecutive_misses(&timing, &m.state, now),
        "pings": m.state.pings,
        "last_alert_at": m.state.last_alert_at.map(|t| t.to_string()),
        "interval_secs": m.def.interval_secs,
        "grace_secs": m.def.grace_secs,
        "schedule": m.def.schedule.as_ref().map(|s| s.expression()),
        "time_zone": m.def.schedule.as_ref().map(|s| s.zone()),
        "cron_job": m.def.cron_job(),
        "down_reason": m.why_down(),
    })
}

/// What `/v1/status?state=` keeps: one of our states, or one of Tickstem's three statuses
/// (spec section 4: `paused`, `failing`, `active`), which group them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StateFilter {
    State(state::State),
    Tickstem(&'static str),
}

impl StateFilter {
    fn matches(self, s: state::State) -> bool {
        match self {
            StateFilter::State(w) => s == w,
            StateFilter::Tickstem(w) => s.tickstem_status() == w,
        }
    }
}

/// Tickstem's statuses, as [`state::State::tickstem_status`] spells them.
const TICKSTEM_STATUSES: [&str; 3] = ["active", "paused", "failing"];

/// The `state` parameter, compared without regard to case; blank means no filter. An
/// unknown value is a 422 naming the accepted ones, rather than a filter nothing matches.
fn state_filter(params: &HashMap<String, String>) -> Result<Option<StateFilter>, ApiError> {
    let Some(wanted) = crate::http::query::text_param(params, "state") else {
        return Ok(None);
    };
    if let Some(s) = state::State::ALL
        .into_iter()
        .find(|s| s.as_str().eq_ignore_ascii_case(&wanted))
    {
        return Ok(Some(StateFilter::State(s)));
    }
    if let Some(t) = TICKSTEM_STATUSES
        .into_iter()
        .find(|t| t.eq_ignore_ascii_case(&wanted))
    {
        return Ok(Some(StateFilter::Tickstem(t)));
    }
    let states: Vec<&str> = state::State::ALL.iter().map(|s| s.as_str()).collect();
    Err(ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        format!(
            "query parameter state must be one of {} or Tickstem's {}",
            states.join(", "),
            TICKSTEM_STATUSES.join(", ")
        ),
    ))
}

async fn status(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let owner = bearer(&headers).and_then(|t| state.core.registry.authenticate(t));
    let scope: Option<String> = match owner {
        Some(o) if o.kind == TokenKind::Admin => None,
        Some(o) if o.kind == TokenKind::Application => Some(o.key),
        _ => return ApiError::new(StatusCode::UNAUTHORIZED, "Unauthorized").into_response(),
    };
    let wanted = match state_filter(&params) {
        Ok(w) => w,
        Err(e) => return e.into_response(),
    };
    let now = state.core.engine.clock().now();
    let monitors: Vec<Value> = state
        .core
        .engine
        .list()
        .iter()
        .filter(|m| scope.is_none() || m.def.application() == scope.as_deref())
        .filter(|m| wanted.is_none_or(|w| w.matches(m.state.state)))
        .map(|m| monitor_json(m, now))
        .collect();
    let mut counts = serde_json::Map::new();
    for s in state::State::ALL {
        let n = monitors.iter().filter(|m| m["state"] == s.as_str()).count();
        counts.insert(s.as_str().into(), n.into());
    }
    (
        StatusCode::OK,
        axum::Json(json!({ "monitors": monitors, "counts": counts, "as_of": now.to_string() })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_address_is_written_as_display_writes_it() {
        let mut addresses: Vec<std::net::IpAddr> = (0..=255u8)
            .map(|o| std::net::Ipv4Addr::new(o, 255 - o, o / 3, o.wrapping_mul(7)).into())
            .collect();
        addresses.extend(
            [
                "0.0.0.0",
                "255.255.255.255",
                "10.0.100.9",
                "::1",
                "2001:db8::8a2e:370:7334",
            ]
            .map(|a| a.parse::<std::net::IpAddr>().unwrap()),
        );
        for ip in addresses {
            assert_eq!(super::address_text(ip), ip.to_string());
        }
    }

    use super::*;

    fn filter(value: &str) -> Result<Option<StateFilter>, ApiError> {
        state_filter(&HashMap::from([("state".to_string(), value.to_string())]))
    }

    #[test]
    fn the_state_filter_takes_our_states_and_tickstems_statuses_only() {
        use state::State::*;
        for s in state::State::ALL {
            assert_eq!(filter(s.as_str()).unwrap(), Some(StateFilter::State(s)));
            let lower = s.as_str().to_ascii_lowercase();
            assert_eq!(filter(&lower).unwrap(), Some(StateFilter::State(s)));
        }
        assert_eq!(filter(" ").unwrap(), None);
        let failing = filter("failing").unwrap().unwrap();
        let active = filter("Active").unwrap().unwrap();
        let paused = filter("paused").unwrap().unwrap();
        assert!(failing.matches(Down) && !failing.matches(Late));
        for s in [New, Up, Started, Late] {
            assert!(active.matches(s) && !failing.matches(s) && !paused.matches(s));
        }
        assert!(paused.matches(Paused) && !active.matches(Paused) && !active.matches(Down));
        for bad in ["Bogus", "\u{FFFD}", "down,up", "activ"] {
            let res = filter(bad).unwrap_err().into_response();
            assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        }
    }

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    fn peer(ip: &str) -> Option<SocketAddr> {
        Some(SocketAddr::new(ip.parse().unwrap(), 40000))
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let spoofed = headers(&["6.6.6.6"]);
        // A direct client cannot claim another address.
        assert_eq!(
            source(&spoofed, peer("203.0.113.9"), &trusted).as_deref(),
            Some("203.0.113.9")
        );
        assert_eq!(
            source(&spoofed, peer("203.0.113.9"), &[]).as_deref(),
            Some("203.0.113.9")
        );
        // Through the trusted ingress: the address it saw.
        assert_eq!(
            source(&headers(&["198.51.100.7"]), peer("10.1.2.3"), &trusted).as_deref(),
            Some("198.51.100.7")
        );
        // A client that sends its own header in front: the rightmost untrusted entry wins.
        let chain = headers(&["6.6.6.6, 198.51.100.7", "10.9.9.9"]);
        assert_eq!(
            source(&chain, peer("10.1.2.3"), &trusted).as_deref(),
            Some("198.51.100.7")
        );
        // Garbage stops the walk at the last vouched-for hop; no header means the proxy.
        assert_eq!(
            source(
                &headers(&["nonsense, 10.9.9.9"]),
                peer("10.1.2.3"),
                &trusted
            )
            .as_deref(),
            Some("10.9.9.9")
        );
        assert_eq!(
            source(&HeaderMap::new(), peer("10.1.2.3"), &trusted).as_deref(),
            Some("10.1.2.3")
        );
        assert_eq!(
            source(
                &headers(&["::ffff:198.51.100.7"]),
                peer("::ffff:10.1.2.3"),
                &trusted
            )
            .as_deref(),
            Some("198.51.100.7")
        );
    }
}
