//! The Hartslag event API: ingest, stats and CSV export (spec section 1).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use jiff::Timestamp;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{ApiError, AppState, authenticate_app, error, json_body};
use crate::core::calendar::{Periods, date_key, local_date};
use crate::core::ingest::validate::{NewEvent, ValidationErrors, parse_created_at, validate_event};
use crate::core::registry::AppInfo;
use crate::core::store::events::{EventWrite, ExportFilter, Idempotency, Outcome, PeriodTallies};
use crate::core::store::keys::{EventValue, Tally};

/// Routes of this family.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/heartbeat", post(ingest))
        .route("/api/v1/stats", get(stats))
        .route("/api/v1/export.csv", get(export))
}

fn unprocessable(errors: &ValidationErrors) -> Response {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        axum::Json(errors.to_json()),
    )
        .into_response()
}

/// Reads a request body of at most `state.max_body_bytes` within `state.body_timeout`;
/// `Err` is the 413, 408 (too slow) or 400 answer.
pub async fn read_body(state: &AppState, body: Body) -> Result<Bytes, ApiError> {
    let (limit, timeout) = (state.max_body_bytes, state.body_timeout);
    let read = tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await;
    let Ok(read) = read else {
        return Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {}s",
                timeout.as_secs()
            ),
        ));
    };
    read.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .map(|s| s.to_string().contains("length limit"))
            .unwrap_or(false)
            || e.to_string().contains("length limit");
        if too_large {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body is larger than the limit of {limit} bytes"),
            )
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("could not read the request body: {e}"),
            )
        }
    })
}

async fn ingest(State(state): State<AppState>, req: axum::extract::Request) -> Response {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let headers = &parts.headers;
    let app = match authenticate_app(&state, headers) {
        Ok(app) => app,
        Err(res) => return res.into_response(),
    };
    let idempotency_key = match idempotency_header(headers) {
        Ok(k) => k,
        Err(res) => return res.into_response(),
    };
    let bytes = match read_body(&state, body).await {
        Ok(b) => b,
        Err(res) => return res.into_response(),
    };
    let value: Value = if bytes.iter().all(u8::is_ascii_whitespace) {
        Value::Object(Default::default())
    } else {
        match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            Err(_) => return unprocessable(&ValidationErrors::body_not_object()),
        }
    };
    let event = match validate_event(&value) {
        Ok(e) => e,
        Err(errors) => return unprocessable(&errors),
    };
    let idempotency = idempotency_key.map(|key| Idempotency {
        key,
        fingerprint: fingerprint(&event),
    });
    let at = event.created_at.unwrap_or_else(Timestamp::now);
    let write = EventWrite {
        app: app.num,
        at,
        date: date_key(local_date(at, &app.tz)),
        value: EventValue {
            event: event.event,
            weight: event.weight,
            user_id: event.user_id,
        },
        idempotency,
    };
    let outcome = match state.events.write(write).await {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(error = %e, application = %app.key, "event not stored");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the event could not be stored; retry later",
            );
        }
    };
    match outcome {
        Outcome::Stored => {
            state.metrics.events_stored.fetch_add(1, Ordering::Relaxed);
            state.metrics.ingest_latency.observe(started.elapsed());
            json_body(StatusCode::CREATED, "[]")
        }
        Outcome::Replayed => {
            state
                .metrics
                .events_replayed
                .fetch_add(1, Ordering::Relaxed);
            let mut res = json_body(StatusCode::CREATED, "[]");
            res.headers_mut().insert(
                REPLAYED_HEADER,
                axum::http::HeaderValue::from_static("true"),
            );
            res
        }
        Outcome::KeyReused => {
            let msg =
                "The Idempotency-Key was already used with a different event in the last 24 hours.";
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                axum::Json(json!({"message": msg, "errors": {"idempotency_key": [msg]}})),
            )
                .into_response()
        }
    }
}

/// Marks the answer to a retry that was not counted again.
const REPLAYED_HEADER: &str = "idempotent-replayed";

/// The hashed `Idempotency-Key` header, if sent: 1 to 255 printable ASCII characters, as
/// the IETF draft and common practice allow. Only the hash is stored.
fn idempotency_header(headers: &HeaderMap) -> Result<Option<[u8; 32]>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let b = v.as_bytes();
    if b.is_empty() || b.len() > 255 || !b.iter().all(|c| (0x20..0x7f).contains(c)) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "the Idempotency-Key header must be 1 to 255 printable ASCII characters",
        ));
    }
    Ok(Some(Sha256::digest(b).into()))
}

/// What a retry must repeat to count as the same request: name, weight, user and the time
/// given (not the body's bytes, so a client that re-serializes differently still matches).
fn fingerprint(e: &NewEvent) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update((e.event.len() as u64).to_le_bytes());
    h.update(e.event.as_bytes());
    h.update(e.weight.to_le_bytes());
    match e.user_id {
        Some(u) => {
            h.update([1]);
            h.update(u.to_le_bytes());
        }
        None => h.update([0]),
    }
    match e.created_at {
        Some(t) => {
            h.update([1]);
            h.update(t.as_nanosecond().to_le_bytes());
        }
        None => h.update([0]),
    }
    h.finalize().into()
}

fn int_param(params: &HashMap<String, String>, name: &str) -> Result<Option<i64>, ApiError> {
    match params.get(name).map(|s| s.trim()).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => s.parse::<i64>().map(Some).map_err(|_| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("query parameter {name} must be an integer, got {s:?}"),
            )
        }),
    }
}

fn tally_json(t: &Tally) -> Value {
    json!({ "count": t.count, "weight": t.weight })
}

fn periods_json(p: &PeriodTallies) -> Value {
    json!({
        "today": tally_json(&p.today),
        "week": tally_json(&p.week),
        "month": tally_json(&p.month),
        "total": tally_json(&p.total),
    })
}

async fn stats(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let app = match authenticate_app(&state, &headers) {
        Ok(app) => app,
        Err(res) => return res.into_response(),
    };
    let user = match int_param(&params, "user_id") {
        Ok(u) => u,
        Err(res) => return res.into_response(),
    };
    let event = params
        .get("event")
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    let now = Timestamp::now();
    let periods = match params
        .get("date")
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
    {
        None => Periods::at(now, &app.tz),
        Some(text) => match text.parse::<jiff::civil::Date>() {
            Ok(date) => Periods::of_date(date),
            Err(_) => {
                return ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("query parameter date must be a YYYY-MM-DD date, got {text:?}"),
                )
                .into_response();
            }
        },
    };
    let store = state.registry.store().clone();
    let num = app.num;
    let ev = event.clone();
    let report =
        match tokio::task::spawn_blocking(move || store.stats(num, &periods, ev.as_deref(), user))
            .await
        {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "stats query failed");
                return error(StatusCode::INTERNAL_SERVER_ERROR, "stats could not be read");
            }
            Err(_) => return error(StatusCode::INTERNAL_SERVER_ERROR, "stats could not be read"),
        };
    let mut events: Vec<(&String, &PeriodTallies)> = report.events.iter().collect();
    events.sort_by(|a, b| b.1.total.count.cmp(&a.1.total.count).then(a.0.cmp(b.0)));
    let mut body = periods_json(&report.overall);
    if let Value::Object(map) = &mut body {
        map.insert("application".into(), json!(app.name));
        map.insert("namespace".into(), json!(app.namespace));
        map.insert("time_zone".into(), json!(app.spec.time_zone_name()));
        map.insert("as_of".into(), json!(now.to_string()));
        map.insert(
            "periods".into(),
            json!({
                "today": periods.today.to_string(),
                "week_start": periods.week_start.to_string(),
                "month_start": periods.month_start.to_string(),
            }),
        );
        map.insert("filters".into(), json!({ "event": event, "user_id": user }));
        map.insert(
            "events".into(),
            Value::Array(
                events
                    .into_iter()
                    .map(|(name, p)| {
                        let mut v = periods_json(p);
                        if let Value::Object(m) = &mut v {
                            m.insert("event".into(), json!(name));
                        }
                        v
                    })
                    .collect(),
            ),
        );
    }
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// Parses an export bound: an instant, or a date in the application's zone (`end` = day after).
fn bound(
    app: &AppInfo,
    name: &str,
    value: Option<&String>,
    end: bool,
) -> Result<Option<Timestamp>, ApiError> {
    let Some(text) = value.map(|s| s.trim()).filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let bad = || {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "query parameter {name} must be an RFC 3339 time or a YYYY-MM-DD date, got {text:?}"
            ),
        )
    };
    if text.len() == 10 {
        let date: jiff::civil::Date = text.parse().map_err(|_| bad())?;
        let date = if end {
            date.tomorrow().map_err(|_| bad())?
        } else {
            date
        };
        let z = date.to_zoned(app.tz.clone()).map_err(|_| bad())?;
        return Ok(Some(z.timestamp()));
    }
    parse_created_at(text).map(Some).ok_or_else(bad)
}

/// Appends one RFC 4180 record: fields quoted when they hold a comma, quote or line break.
fn csv_row(buf: &mut Vec<u8>, fields: [&str; 4]) {
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        if f.contains([',', '"', '\r', '\n']) || f.starts_with(' ') || f.ends_with(' ') {
            buf.push(b'"');
            buf.extend_from_slice(f.replace('"', "\"\"").as_bytes());
            buf.push(b'"');
        } else {
            buf.extend_from_slice(f.as_bytes());
        }
    }
    buf.extend_from_slice(b"\r\n");
}

async fn export(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let app = match authenticate_app(&state, &headers) {
        Ok(app) => app,
        Err(res) => return res.into_response(),
    };
    match export_filter(&app, &params) {
        Ok(filter) => csv_response(state.registry.store().clone(), &app, filter),
        Err(res) => res.into_response(),
    }
}

/// Reads the export query (`from`, `to`, `event`, `user_id`), shared by the API and the
/// dashboard's download link so both filter alike.
pub fn export_filter(
    app: &AppInfo,
    params: &HashMap<String, String>,
) -> Result<ExportFilter, ApiError> {
    Ok(ExportFilter {
        from: bound(app, "from", params.get("from"), false)?,
        to: bound(app, "to", params.get("to"), true)?,
        event: params
            .get("event")
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty()),
        user_id: int_param(params, "user_id")?,
    })
}

/// Text a spreadsheet would take for a formula (`=`, `+`, `-`, `@`, or a tab or carriage
/// return before one) gets a leading `'`, which spreadsheets show as text and hide. Only
/// event names need it: they are the one column a client chooses freely; times and numbers
/// are written by the server.
pub fn neutralise_formula(cell: &str) -> std::borrow::Cow<'_, str> {
    if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        std::borrow::Cow::Owned(format!("'{cell}"))
    } else {
        std::borrow::Cow::Borrowed(cell)
    }
}

/// How long an export waits for a client to take the next chunk before giving up on it,
/// so a client that stopped reading does not hold a storage thread forever.
const EXPORT_STALL: std::time::Duration = std::time::Duration::from_secs(60);

/// Streams an application's events as RFC 4180 CSV without building it in memory.
pub fn csv_response(
    store: crate::core::store::Store,
    app: &AppInfo,
    filter: ExportFilter,
) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let num = app.num;
    let key = app.key.clone();
    let runtime = tokio::runtime::Handle::current();
    // False once the client is gone or stalled: the export stops.
    let send = move |chunk: Result<Bytes, std::io::Error>| -> bool {
        match runtime.block_on(tokio::time::timeout(EXPORT_STALL, tx.send(chunk))) {
            Ok(Ok(())) => true,
            Ok(Err(_)) => false,
            Err(_) => {
                tracing::info!(application = %key, "export stopped: the client took no data for a minute");
                false
            }
        }
    };
    tokio::task::spawn_blocking(move || {
        let mut buf = Vec::with_capacity(64 * 1024);
        csv_row(&mut buf, ["created_at", "event", "weight", "user_id"]);
        for item in store.export(num, filter) {
            match item {
                Ok(e) => {
                    let user = e.value.user_id.map(|u| u.to_string()).unwrap_or_default();
                    csv_row(
                        &mut buf,
                        [
                            &e.at.to_string(),
                            &neutralise_formula(&e.value.event),
                            &e.value.weight.to_string(),
                            &user,
                        ],
                    );
                }
                Err(err) => {
                    tracing::error!(error = %err, "export stopped");
                    send(Err(std::io::Error::other(err.to_string())));
                    return;
                }
            }
            if buf.len() >= 60 * 1024 && !send(Ok(Bytes::from(std::mem::take(&mut buf)))) {
                return;
            }
        }
        if !buf.is_empty() {
            send(Ok(Bytes::from(buf)));
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let filename = format!("{}-events.csv", app.name);
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{filename}\""),
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}
