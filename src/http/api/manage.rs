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
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::events::read_body;
use super::{ApiError, AppState, Segment, authenticate_app};
use crate::core::catalogue::{CatalogueError, CreateRequest, MonitorCatalogue, UpdateRequest};
use crate::core::monitor::engine::Monitor;
use crate::core::monitor::state;
use crate::core::registry::AppInfo;

/// Tickstem's bounds for `interval_secs`.
pub const INTERVAL_RANGE: (u64, u64) = (60, 86_400);
/// Tickstem's bounds for `grace_secs`.
pub const GRACE_RANGE: (u64, u64) = (0, 86_400);

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

    /// Takes one token for `key`; false when the bucket is empty.
    pub fn allow(&self, key: &str) -> bool {
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let (tokens, last) = map.entry(key.to_string()).or_insert((self.burst, now));
        *tokens =
            (*tokens + now.duration_since(*last).as_secs_f64() * self.per_sec).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Routes of this family.
pub fn routes() -> Router<AppState> {
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

fn err(status: StatusCode, msg: impl Into<String>) -> ApiError {
    ApiError::new(status, msg)
}

fn catalogue_error(e: CatalogueError) -> ApiError {
    let status = match e {
        CatalogueError::NotFound => StatusCode::NOT_FOUND,
        CatalogueError::Quota => StatusCode::PAYMENT_REQUIRED,
        CatalogueError::ReadOnly(_) => StatusCode::CONFLICT,
        CatalogueError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    err(status, e.to_string())
}

/// Authenticates, rate-limits and resolves the monitor catalogue.
fn begin(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<(Arc<AppInfo>, Arc<dyn MonitorCatalogue>), ApiError> {
    let app = authenticate_app(state, headers)?;
    if !state.rate_limit.allow(&app.key) {
        return Err(err(
            StatusCode::TOO_MANY_REQUESTS,
            "rate limit exceeded; slow down",
        ));
    }
    let catalogue = state.catalogue.get().cloned().ok_or_else(|| {
        err(
            StatusCode::SERVICE_UNAVAILABLE,
            "monitor management is not available yet",
        )
    })?;
    Ok((app, catalogue))
}

/// The contract's Heartbeat object.
pub fn heartbeat_json(m: &Monitor, token: Option<String>, now: jiff::Timestamp) -> Value {
    json!({
        "id": m.def.id,
        "name": m.def.display_name.clone().unwrap_or_else(|| m.def.name.clone()),
        "token": token,
        "interval_secs": m.def.interval_secs,
        "grace_secs": m.def.grace_secs,
        "status": m.state.state.tickstem_status(),
        "consecutive_misses": state::consecutive_misses(&m.def.timing(), &m.state, now),
        "last_pinged_at": m.state.last_ping_at.map(|t| t.to_string()),
        "next_expected_at": m.state.next_expected_at().map(|t| t.to_string()),
        "created_at": m.def.created_at.to_string(),
        "updated_at": m.def.updated_at.to_string(),
        "state": m.state.state.as_str(),
        "resource": m.def.name,
    })
}

/// `app`'s monitor with API id `id`; `None` for another application's, or for no id.
fn find(state: &AppState, app: &AppInfo, id: Option<&str>) -> Option<Monitor> {
    let id = id?;
    state
        .engine
        .list()
        .into_iter()
        .find(|m| m.def.id == id && m.def.application.as_deref() == Some(app.key.as_str()))
}

fn ok(status: StatusCode, v: Value) -> Response {
    (status, axum::Json(v)).into_response()
}

async fn list(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let (app, catalogue) = match begin(&state, &headers) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let now = state.engine.clock().now();
    let items: Vec<Value> = state
        .engine
        .list()
        .iter()
        .filter(|m| m.def.application.as_deref() == Some(app.key.as_str()))
        .map(|m| heartbeat_json(m, catalogue.token(m), now))
        .collect();
    ok(StatusCode::OK, json!({ "heartbeats": items }))
}

async fn get_one(
    State(state): State<AppState>,
    headers: HeaderMap,
    Segment(id): Segment,
) -> Response {
    let (app, catalogue) = match begin(&state, &headers) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    match find(&state, &app, id.as_deref()) {
        Some(m) => ok(
            StatusCode::OK,
            heartbeat_json(&m, catalogue.token(&m), state.engine.clock().now()),
        ),
        None => catalogue_error(CatalogueError::NotFound).into_response(),
    }
}

/// Parses a JSON object body; `Err` is the 400 answer.
async fn json_object(
    state: &AppState,
    body: Body,
) -> Result<serde_json::Map<String, Value>, ApiError> {
    let bytes = read_body(state, body).await?;
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
    map: &serde_json::Map<String, Value>,
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

fn name_field(
    map: &serde_json::Map<String, Value>,
    required: bool,
) -> Result<Option<String>, ApiError> {
    match map.get("name") {
        None | Some(Value::Null) if required => {
            Err(err(StatusCode::UNPROCESSABLE_ENTITY, "name is required"))
        }
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            let t = s.trim();
            if t.is_empty() || t.chars().count() > 255 {
                Err(err(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "name must be 1 to 255 characters",
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

async fn create(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let (app, catalogue) = match begin(&state, &headers) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let map = match json_object(&state, body).await {
        Ok(m) => m,
        Err(r) => return r.into_response(),
    };
    let req = (|| {
        Ok::<_, ApiError>(CreateRequest {
            name: name_field(&map, true)?.unwrap_or_default(),
            interval_secs: seconds(&map, "interval_secs", INTERVAL_RANGE)?.unwrap_or(3600),
            grace_secs: seconds(&map, "grace_secs", GRACE_RANGE)?.unwrap_or(300),
        })
    })();
    let req = match req {
        Ok(r) => r,
        Err(r) => return r.into_response(),
    };
    match catalogue.create(&app, req).await {
        Ok((m, token)) => ok(
            StatusCode::CREATED,
            heartbeat_json(&m, Some(token), state.engine.clock().now()),
        ),
        Err(e) => catalogue_error(e).into_response(),
    }
}

async fn apply_update(
    state: &AppState,
    headers: &HeaderMap,
    id: Option<&str>,
    req: Result<UpdateRequest, ApiError>,
) -> Response {
    let (app, catalogue) = match begin(state, headers) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let req = match req {
        Ok(r) => r,
        Err(r) => return r.into_response(),
    };
    let Some(m) = find(state, &app, id) else {
        return catalogue_error(CatalogueError::NotFound).into_response();
    };
    match catalogue.update(&app, &m, req).await {
        Ok(m) => ok(
            StatusCode::OK,
            heartbeat_json(&m, catalogue.token(&m), state.engine.clock().now()),
        ),
        Err(e) => catalogue_error(e).into_response(),
    }
}

async fn update(
    State(state): State<AppState>,
    headers: HeaderMap,
    Segment(id): Segment,
    body: Body,
) -> Response {
    let req = match json_object(&state, body).await {
        Ok(map) => (|| {
            let paused = match map.get("status") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) if s == "paused" => Some(true),
                Some(Value::String(s)) if s == "active" => Some(false),
                Some(_) => {
                    return Err(err(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "status must be \"paused\" or \"active\"",
                    ));
                }
            };
            Ok(UpdateRequest {
                name: name_field(&map, false)?,
                interval_secs: seconds(&map, "interval_secs", INTERVAL_RANGE)?,
                grace_secs: seconds(&map, "grace_secs", GRACE_RANGE)?,
                paused,
            })
        })(),
        Err(r) => Err(r),
    };
    apply_update(&state, &headers, id.as_deref(), req).await
}

async fn pause(
    State(state): State<AppState>,
    headers: HeaderMap,
    Segment(id): Segment,
) -> Response {
    apply_update(
        &state,
        &headers,
        id.as_deref(),
        Ok(UpdateRequest {
            paused: Some(true),
            ..Default::default()
        }),
    )
    .await
}

async fn resume(
    State(state): State<AppState>,
    headers: HeaderMap,
    Segment(id): Segment,
) -> Response {
    apply_update(
        &state,
        &headers,
        id.as_deref(),
        Ok(UpdateRequest {
            paused: Some(false),
            ..Default::default()
        }),
    )
    .await
}

async fn delete(
    State(state): State<AppState>,
    headers: HeaderMap,
    Segment(id): Segment,
) -> Response {
    let (app, catalogue) = match begin(&state, &headers) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let Some(m) = find(&state, &app, id.as_deref()) else {
        return catalogue_error(CatalogueError::NotFound).into_response();
    };
    match catalogue.delete(&app, &m).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => catalogue_error(e).into_response(),
    }
}

async fn pings(
    State(state): State<AppState>,
    headers: HeaderMap,
    Segment(id): Segment,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let (app, _) = match begin(&state, &headers) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let limit = match params.get("limit").map(|s| s.trim().parse::<usize>()) {
        None => 50,
        Some(Ok(n)) if (1..=1000).contains(&n) => n,
        Some(_) => {
            return err(
                StatusCode::UNPROCESSABLE_ENTITY,
                "limit must be an integer from 1 to 1000",
            )
            .into_response();
        }
    };
    let Some(m) = find(&state, &app, id.as_deref()) else {
        return catalogue_error(CatalogueError::NotFound).into_response();
    };
    match state.engine.pings(m.num, limit) {
        Ok(list) => {
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
                    })
                })
                .collect();
            ok(StatusCode::OK, json!({ "pings": items }))
        }
        Err(e) => err(StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}
