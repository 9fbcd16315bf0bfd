//! Tickstem-compatible monitor management (spec section 3): list, get, create, update,
//! pause/resume, delete and ping history, authenticated with an Application's token and
//! scoped to that Application's Heartbeats.
//!
//! Reads come from the engine's snapshot in both modes; writes go through the front end's
//! [`MonitorCatalogue`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};

use crate::core::catalogue::{
    CatalogueError, CreateRequest, MonitorCatalogue, UpdateRequest, api_grace_secs,
    api_interval_secs,
};
use crate::core::cron::Schedule;
use crate::core::monitor::engine::Monitor;
use crate::core::monitor::state;
use crate::core::registry::AppInfo;
use crate::http::HttpState;
use crate::http::auth::AuthenticatedApp;
use crate::http::body::read_body;
use crate::http::error::ApiError;
use crate::http::path::Segment;

pub use crate::core::catalogue::{GRACE_RANGE, INTERVAL_RANGE};

/// Token bucket per API key: `burst` requests, refilled at `per_sec`.
#[derive(Debug)]
pub struct RateLimiter {
    per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// A limiter allowing `per_sec` sustained and `burst` at once.
    pub fn new(per_sec: f64, burst: f64) -> Self {
        Self {
            per_sec,
            burst,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `key`; `Err` holds the whole seconds until the bucket has one
    /// again (at least 1), for the answer's `Retry-After`.
    pub fn take(&self, key: &str) -> Result<(), u64> {
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let (tokens, last) = map.entry(key.to_string()).or_insert((self.burst, now));
        *tokens =
            (*tokens + now.duration_since(*last).as_secs_f64() * self.per_sec).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            return Ok(());
        }
        let wait = if self.per_sec > 0.0 {
            ((1.0 - *tokens) / self.per_sec).ceil()
        } else {
            REFILL_NEVER_RETRY_AFTER_SECS as f64
        };
        // A float cast saturates; NaN (a rate configured as NaN) becomes 0, then 1.
        Err((wait as u64).max(1))
    }
}

/// The `Retry-After` of a limiter whose bucket never refills (a rate of 0).
const REFILL_NEVER_RETRY_AFTER_SECS: u64 = 60;

/// Routes of this family.
pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/v1/heartbeats", get(list).post(create))
        .route(
            "/v1/heartbeats/{id}",
            get(get_one).patch(update).delete(delete),
        )
        .route("/v1/heartbeats/{id}/pause", post(pause))
        .route("/v1/heartbeats/{id}/resume", post(resume))
        .route("/v1/heartbeats/{id}/pings", get(pings))
}

/// A caller of the management API: authenticated by its Application's token, within its
/// rate limit, with the catalogue its writes go to.
struct Managing {
    app: Arc<AppInfo>,
    catalogue: Arc<dyn MonitorCatalogue>,
}

impl FromRequestParts<HttpState> for Managing {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &HttpState) -> Result<Self, Response> {
        let caller = Self::authenticate(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        if parts.method != axum::http::Method::GET {
            if let Some(e) = state.core.storage_refusal() {
                let what = "the heartbeat cannot be changed";
                return Err(ApiError::storage(what, &e).into_response());
            }
            if !state.core.leads() {
                return Err(not_leading());
            }
        }
        Ok(caller)
    }
}

/// A change asked of a replica that does not lead: only the leader changes monitors,
/// and a replica it has just lost leadership to will again within seconds.
fn not_leading() -> Response {
    let msg = "this replica does not lead; retry";
    let mut res = err(StatusCode::SERVICE_UNAVAILABLE, msg).into_response();
    res.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        axum::http::HeaderValue::from(NOT_LEADING_RETRY_AFTER_SECS),
    );
    res
}

/// Seconds a client is told to wait before it retries a change a replica that does not
/// lead refused (a load balancer most likely sends the retry to another replica).
pub const NOT_LEADING_RETRY_AFTER_SECS: u64 = 1;

impl Managing {
    async fn authenticate(parts: &mut Parts, state: &HttpState) -> Result<Self, ApiError> {
        let AuthenticatedApp(app) = AuthenticatedApp::from_request_parts(parts, state).await?;
        if let Err(retry_after) = state.rate_limit.take(&app.key) {
            let msg = format!("rate limit exceeded; retry in {retry_after}s");
            return Err(err(StatusCode::TOO_MANY_REQUESTS, msg).retry_after(retry_after));
        }
        let catalogue = state.catalogue.clone().ok_or_else(|| {
            err(
                StatusCode::SERVICE_UNAVAILABLE,
                "monitor management is not available yet",
            )
        })?;
        Ok(Self { app, catalogue })
    }
}

impl Managing {
    /// The caller's monitor with management id `id`.
    fn find(&self, state: &HttpState, id: &str) -> Result<Monitor, ApiError> {
        state
            .core
            .engine
            .list()
            .into_iter()
            .find(|m| m.def.id == id && m.def.application() == Some(self.app.key.as_str()))
            .ok_or_else(|| catalogue_error(CatalogueError::NotFound))
    }

    /// The contract's Heartbeat object for `m`, with its token when the catalogue knows it.
    async fn answer(&self, state: &HttpState, status: StatusCode, m: &Monitor) -> Response {
        let monitors = std::slice::from_ref(m);
        let token = self.catalogue.tokens(monitors).await.pop().flatten();
        let json = heartbeat_json(m, token, state.core.engine.clock().now());
        (status, axum::Json(json)).into_response()
    }
}

fn err(status: StatusCode, msg: impl Into<String>) -> ApiError {
    ApiError::new(status, msg)
}

fn catalogue_error(e: CatalogueError) -> ApiError {
    let status = match e {
        CatalogueError::NotFound => StatusCode::NOT_FOUND,
        CatalogueError::Quota => StatusCode::PAYMENT_REQUIRED,
        CatalogueError::ReadOnly(_) => StatusCode::CONFLICT,
        CatalogueError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
        CatalogueError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        CatalogueError::Refused(_) => StatusCode::UNPROCESSABLE_ENTITY,
    };
    err(status, e.to_string())
}

/// The contract's Heartbeat object. A scheduled monitor reports its schedule's typical
/// gap as `interval_secs`, so clients that only know intervals still read something true;
/// like every interval it is reported within the contract's 60–86400
/// ([`api_interval_secs`]), and `grace_secs` within 0–86400 ([`api_grace_secs`]), so what
/// a client reads it may also write back, which leaves a longer stored value as it is
/// ([`UpdateRequest::without_reported_values`]).
pub fn heartbeat_json(m: &Monitor, token: Option<String>, now: jiff::Timestamp) -> Value {
    json!({
        "id": m.def.id,
        "name": m.def.display_name().map(str::to_string).unwrap_or_else(|| m.def.name().to_string()),
        "token": token,
        "interval_secs": api_interval_secs(m.def.interval_secs),
        "schedule": m.def.schedule.as_ref().map(Schedule::expression),
        "time_zone": m.def.schedule.as_ref().map(Schedule::zone),
        "grace_secs": api_grace_secs(m.def.grace_secs),
        "status": m.state.state.tickstem_status(),
        "consecutive_misses": state::consecutive_misses(&m.def.timing(), &m.state, now),
        "last_pinged_at": m.state.last_ping_at.map(|t| t.to_string()),
        "next_expected_at": m.state.next_expected_at().map(|t| t.to_string()),
        "created_at": m.def.created_at.to_string(),
        "updated_at": m.def.updated_at.to_string(),
        "state": m.state.state.as_str(),
        "resource": m.def.name(),
    })
}

async fn list(State(state): State<HttpState>, caller: Managing) -> Response {
    let mine: Vec<Monitor> = state
        .core
        .engine
        .list()
        .into_iter()
        .filter(|m| m.def.application() == Some(caller.app.key.as_str()))
        .collect();
    let tokens = caller.catalogue.tokens(&mine).await;
    let now = state.core.engine.clock().now();
    let items: Vec<Value> = mine
        .iter()
        .zip(tokens)
        .map(|(m, token)| heartbeat_json(m, token, now))
        .collect();
    (StatusCode::OK, axum::Json(json!({ "heartbeats": items }))).into_response()
}

async fn get_one(
    State(state): State<HttpState>,
    caller: Managing,
    Segment(id): Segment,
) -> Result<Response, ApiError> {
    let m = caller.find(&state, &id)?;
    Ok(caller.answer(&state, StatusCode::OK, &m).await)
}

/// Parses a JSON object body; `Err` is the 400 answer.
async fn json_object(state: &HttpState, body: Body) -> Result<Map<String, Value>, ApiError> {
    let bytes = read_body(body, state.max_body_bytes, state.limits.body_timeout).await?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(err(
            StatusCode::BAD_REQUEST,
            "the request body must be a JSON object",
        )),
        Err(e) => Err(err(
            StatusCode::BAD_REQUEST,
            format!("the request body is not valid JSON: {e}"),
        )),
    }
}

fn seconds(
    map: &Map<String, Value>,
    field: &str,
    range: (u64, u64),
) -> Result<Option<u64>, ApiError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n >= range.0 && n <= range.1 => Ok(Some(n)),
            _ => Err(err(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("{field} must be an integer from {} to {}", range.0, range.1),
            )),
        },
    }
}

fn name_field(map: &Map<String, Value>, required: bool) -> Result<Option<String>, ApiError> {
    match map.get("name") {
        None | Some(Value::Null) if required => {
            Err(err(StatusCode::UNPROCESSABLE_ENTITY, "name is required"))
        }
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            let t = s.trim();
            if t.is_empty() || t.chars().count() > 255 || t.chars().any(char::is_control) {
                Err(err(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "name must be 1 to 255 characters without control characters (line breaks included)",
                ))
            } else {
                Ok(Some(t.to_string()))
            }
        }
        Some(_) => Err(err(
            StatusCode::UNPROCESSABLE_ENTITY,
            "name must be a string",
        )),
    }
}

fn unprocessable(msg: impl Into<String>) -> ApiError {
    err(StatusCode::UNPROCESSABLE_ENTITY, msg)
}

/// An optional string field: absent, `null`, or a string.
fn text_field(map: &Map<String, Value>, field: &str) -> Result<Option<Option<String>>, ApiError> {
    match map.get(field) {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(Value::String(s)) => Ok(Some(Some(s.trim().to_string()))),
        Some(_) => Err(unprocessable(format!("{field} must be a string"))),
    }
}

/// `schedule` and `time_zone` of a request: `Some(None)` takes a monitor off its schedule.
/// `current` is the schedule the monitor has now, whose expression a lone `time_zone`
/// moves to another zone.
fn schedule_field(
    map: &Map<String, Value>,
    current: Option<&Schedule>,
) -> Result<Option<Option<Schedule>>, ApiError> {
    let zone = text_field(map, "time_zone")?.flatten();
    let expr = match (text_field(map, "schedule")?, current) {
        (Some(None), _) if zone.is_some() => {
            return Err(unprocessable(
                "time_zone applies to a schedule: send schedule as well",
            ));
        }
        (Some(None), _) => return Ok(Some(None)),
        (Some(Some(e)), _) => e,
        (None, Some(c)) if zone.is_some() => c.expression().to_string(),
        (None, _) if zone.is_some() => {
            return Err(unprocessable(
                "time_zone applies to a schedule: send schedule as well",
            ));
        }
        (None, _) => return Ok(None),
    };
    if map.get("interval_secs").is_some_and(|v| !v.is_null()) {
        return Err(unprocessable(
            "schedule and interval_secs are mutually exclusive: send one of them",
        ));
    }
    Schedule::parse(&expr, zone.as_deref())
        .map(|s| Some(Some(s)))
        .map_err(|e| match e {
            crate::core::cron::ScheduleError::TimeZone(_) => {
                unprocessable(format!("time_zone {e}"))
            }
            other => unprocessable(format!("schedule {other}")),
        })
}

fn status_field(map: &Map<String, Value>) -> Result<Option<bool>, ApiError> {
    match map.get("status") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s == "paused" => Ok(Some(true)),
        Some(Value::String(s)) if s == "active" => Ok(Some(false)),
        Some(_) => Err(err(
            StatusCode::UNPROCESSABLE_ENTITY,
            "status must be \"paused\" or \"active\"",
        )),
    }
}

async fn create(
    State(state): State<HttpState>,
    caller: Managing,
    body: Body,
) -> Result<Response, ApiError> {
    let map = json_object(&state, body).await?;
    let req = CreateRequest {
        name: name_field(&map, true)?.unwrap_or_default(),
        schedule: schedule_field(&map, None)?.flatten(),
        interval_secs: seconds(&map, "interval_secs", INTERVAL_RANGE)?.unwrap_or(3600),
        grace_secs: seconds(&map, "grace_secs", GRACE_RANGE)?.unwrap_or(300),
    };
    let (m, token) = caller
        .catalogue
        .create(&caller.app, req)
        .await
        .map_err(catalogue_error)?;
    let json = heartbeat_json(&m, Some(token), state.core.engine.clock().now());
    Ok((StatusCode::CREATED, axum::Json(json)).into_response())
}

async fn apply_update(
    state: &HttpState,
    caller: &Managing,
    id: &str,
    req: UpdateRequest,
) -> Result<Response, ApiError> {
    let m = caller.find(state, id)?;
    let m = caller
        .catalogue
        .update(&caller.app, &m, req)
        .await
        .map_err(catalogue_error)?;
    Ok(caller.answer(state, StatusCode::OK, &m).await)
}

async fn update(
    State(state): State<HttpState>,
    caller: Managing,
    Segment(id): Segment,
    body: Body,
) -> Result<Response, ApiError> {
    let map = json_object(&state, body).await?;
    let current = caller.find(&state, &id)?;
    let req = UpdateRequest {
        name: name_field(&map, false)?,
        schedule: schedule_field(&map, current.def.schedule.as_ref())?,
        interval_secs: seconds(&map, "interval_secs", INTERVAL_RANGE)?,
        grace_secs: seconds(&map, "grace_secs", GRACE_RANGE)?,
        paused: status_field(&map)?,
    }
    .without_reported_values(&current.def);
    apply_update(&state, &caller, &id, req).await
}

async fn pause(
    State(state): State<HttpState>,
    caller: Managing,
    Segment(id): Segment,
) -> Result<Response, ApiError> {
    let req = UpdateRequest {
        paused: Some(true),
        ..Default::default()
    };
    apply_update(&state, &caller, &id, req).await
}

async fn resume(
    State(state): State<HttpState>,
    caller: Managing,
    Segment(id): Segment,
) -> Result<Response, ApiError> {
    let req = UpdateRequest {
        paused: Some(false),
        ..Default::default()
    };
    apply_update(&state, &caller, &id, req).await
}

async fn delete(
    State(state): State<HttpState>,
    caller: Managing,
    Segment(id): Segment,
) -> Result<Response, ApiError> {
    let m = caller.find(&state, &id)?;
    caller
        .catalogue
        .delete(&caller.app, &m)
        .await
        .map_err(catalogue_error)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn pings(
    State(state): State<HttpState>,
    caller: Managing,
    Segment(id): Segment,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let limit = match params.get("limit").map(|s| s.trim().parse::<usize>()) {
        None => 50,
        Some(Ok(n)) if (1..=1000).contains(&n) => n,
        Some(_) => {
            return Err(err(
                StatusCode::UNPROCESSABLE_ENTITY,
                "limit must be an integer from 1 to 1000",
            ));
        }
    };
    let m = caller.find(&state, &id)?;
    let list = state
        .core
        .engine
        .pings(m.num, limit)
        .await
        .map_err(|e| err(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let items: Vec<Value> = list
        .iter()
        .map(|p| {
            json!({
                "id": format!("{}-{}", m.def.id, p.seq),
                "heartbeat_id": m.def.id,
                "pinged_at": p.at.to_string(),
                "kind": p.kind,
                "exit_code": p.exit_code,
                "duration_ms": p.duration_ms,
                "source": p.source,
                "rid": p.rid,
                "job": p.job,
                "reason": p.reason,
            })
        })
        .collect();
    Ok((StatusCode::OK, axum::Json(json!({ "pings": items }))).into_response())
}
