//! The Hartslag event API: ingest, stats and CSV export (spec section 1).

use std::collections::HashMap;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use jiff::Timestamp;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::core::calendar::{Periods, date_key, local_date};
use crate::core::ingest::validate::{NewEvent, ValidationErrors, validate_event};
use crate::core::registry::AppInfo;
use crate::core::storage::{
    EventValue, EventWrite, Idempotency, Outcome, PeriodTallies, StatsReport, Tally,
};
use crate::http::HttpState;
use crate::http::auth::AuthenticatedApp;
use crate::http::body::read_body;
use crate::http::error::{ApiError, json_body};
use crate::http::export::{csv_response, export_filter};
use crate::http::query::{event_param, int_param, text_param};

/// Routes of this family.
pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/api/v1/heartbeat", post(ingest))
        .route("/api/v1/stats", get(stats))
        .route("/api/v1/export.csv", get(export))
}

/// Marks the answer to a retry that was not counted again.
const REPLAYED_HEADER: &str = "idempotent-replayed";

async fn ingest(
    State(state): State<HttpState>,
    AuthenticatedApp(app): AuthenticatedApp,
    req: Request,
) -> Response {
    let started = Instant::now();
    if let Some(limiter) = &app.ingest
        && let Err(wait) = limiter.check(started)
    {
        return too_many_requests(&app, wait);
    }
    let (parts, body) = req.into_parts();
    let write = match event_write(&state, &app, &parts.headers, body).await {
        Ok(w) => w,
        Err(e) => return e.into_response(),
    };
    // The name outlives the write for the per-name counter.
    let event = write.value.event.clone();
    match state.core.events.write(write).await {
        Ok(Outcome::Stored) => {
            app.counts.record(&event);
            state.requests.ingest_latency.observe(started.elapsed());
            json_body(StatusCode::CREATED, "[]")
        }
        Ok(Outcome::Replayed) => {
            let mut res = json_body(StatusCode::CREATED, "[]");
            res.headers_mut()
                .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
            res
        }
        Ok(Outcome::KeyReused) => {
            let msg =
                "The Idempotency-Key was already used with a different event in the last 24 hours.";
            let body = json!({"message": msg, "errors": {"idempotency_key": [msg]}});
            ApiError::with_body(StatusCode::UNPROCESSABLE_ENTITY, body).into_response()
        }
        Ok(Outcome::TooManyNames) => {
            let msg = "The event field has too many distinct values.";
            let body = json!({"message": msg, "errors": {"event": [msg]}});
            ApiError::with_body(StatusCode::UNPROCESSABLE_ENTITY, body).into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, application = %app.key, "event not stored");
            ApiError::storage("the event could not be stored", &e).into_response()
        }
    }
}

/// 429 for an Application past its ingest rate, with when to retry in whole seconds
/// (`Retry-After`) and the limit in the headers Laravel's throttle sends.
fn too_many_requests(app: &AppInfo, wait: std::time::Duration) -> Response {
    let retry_after = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let mut res =
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, "Too Many Attempts.").into_response();
    let headers = res.headers_mut();
    headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after.max(1)));
    if let Some((rate, _)) = app.limits.ingest {
        headers.insert("x-ratelimit-limit", HeaderValue::from(rate));
    }
    headers.insert("x-ratelimit-remaining", HeaderValue::from(0));
    res
}

/// The event a request asks to store, validated, timestamped and dated in its
/// application's zone, with its `Idempotency-Key`.
async fn event_write(
    state: &HttpState,
    app: &AppInfo,
    headers: &HeaderMap,
    body: Body,
) -> Result<EventWrite, ApiError> {
    let idempotency_key = idempotency_header(headers)?;
    let bytes = read_body(body, state.max_body_bytes, state.limits.body_timeout).await?;
    let value: Value = if bytes.iter().all(u8::is_ascii_whitespace) {
        Value::Object(Default::default())
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|_| unprocessable(&ValidationErrors::body_not_object()))?
    };
    let event = validate_event(&value).map_err(|errors| unprocessable(&errors))?;
    let idempotency = idempotency_key.map(|key| Idempotency {
        key,
        fingerprint: fingerprint(&event),
    });
    let at = event.created_at.unwrap_or_else(Timestamp::now);
    Ok(EventWrite {
        app: app.num,
        at,
        date: date_key(local_date(at, &app.tz)),
        value: EventValue {
            event: event.event,
            weight: event.weight,
            user_id: event.user_id,
        },
        idempotency,
        name_limit: app.limits.event_names,
    })
}

fn unprocessable(errors: &ValidationErrors) -> ApiError {
    ApiError::with_body(StatusCode::UNPROCESSABLE_ENTITY, errors.to_json())
}

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

async fn stats(
    State(state): State<HttpState>,
    AuthenticatedApp(app): AuthenticatedApp,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let user = int_param(&params, "user_id")?;
    let event = event_param(&params, "event")?;
    let now = Timestamp::now();
    let periods = match text_param(&params, "date") {
        None => Periods::at(now, &app.tz),
        Some(text) => Periods::of_date(text.parse().map_err(|_| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("query parameter date must be a YYYY-MM-DD date, got {text:?}"),
            )
        })?),
    };
    // Held until the answer is serialized: with many event names that is work too.
    let _permit = state.reads.permit(&app)?;
    let read = state
        .core
        .events
        .stats(app.num, periods, event.clone(), user);
    let report = match read.await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "stats query failed");
            let msg = "stats could not be read";
            return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, msg));
        }
    };
    // Sorting and writing the rows of an Application with thousands of event names takes
    // milliseconds of CPU: on a blocking thread, not on the workers every ingest request
    // is served on.
    let written = tokio::task::spawn_blocking(move || {
        stats_json(&app, &periods, now, event.as_deref(), user, &report)
    });
    stats_answer(written.await)
}

/// The answer for stats that were read, from the blocking task that wrote their JSON. Each
/// way it can fail says what happened, so a client knows whether to retry: a JSON error or
/// a panic is a bug (500, the log has the details), a task cancelled because the runtime
/// is shutting down is not (503: another replica, or this one restarted, answers).
fn stats_answer(
    written: Result<serde_json::Result<Vec<u8>>, tokio::task::JoinError>,
) -> Result<Response, ApiError> {
    match written {
        Ok(Ok(body)) => Ok((
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "the stats were read but could not be written as JSON");
            let msg = "the stats were read but could not be written as JSON; this is a bug, \
                       and the server's log has the details";
            Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, msg))
        }
        Err(e) if e.is_cancelled() => {
            tracing::warn!("the stats answer was not written: the server is shutting down");
            let msg = "the stats were read but not written: the server is shutting down; retry";
            Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, msg))
        }
        Err(e) => {
            tracing::error!(error = %e, "writing the stats answer panicked");
            let msg = "the stats were read but writing the answer failed unexpectedly (it \
                       panicked); this is a bug, and the server's log has the details";
            Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, msg))
        }
    }
}

/// The JSON answer of `GET /api/v1/stats` for `report`.
fn stats_json(
    app: &AppInfo,
    periods: &Periods,
    now: Timestamp,
    event: Option<&str>,
    user: Option<i64>,
    report: &StatsReport,
) -> serde_json::Result<Vec<u8>> {
    serde_json::to_vec(&StatsBody {
        application: &app.name,
        namespace: &app.namespace,
        time_zone: app.spec.time_zone_name(),
        as_of: now.to_string(),
        periods: PeriodDates {
            today: periods.today.to_string(),
            week_start: periods.week_start.to_string(),
            month_start: periods.month_start.to_string(),
        },
        filters: Filters {
            event,
            user_id: user,
        },
        overall: (&report.overall).into(),
        events: event_rows(report),
    })
}

/// The answer of `GET /api/v1/stats`. Typed rather than built as a `serde_json::Value`:
/// a weight sum is an `i128` (a few events of weight near `i64::MAX` pass it), which
/// `Value` cannot hold, while serde_json writes it as the plain integer it is.
#[derive(serde::Serialize)]
struct StatsBody<'a> {
    application: &'a str,
    namespace: &'a str,
    time_zone: &'a str,
    as_of: String,
    periods: PeriodDates,
    filters: Filters<'a>,
    #[serde(flatten)]
    overall: PeriodsJson,
    events: Vec<EventRow<'a>>,
}

#[derive(serde::Serialize)]
struct PeriodDates {
    today: String,
    week_start: String,
    month_start: String,
}

#[derive(serde::Serialize)]
struct Filters<'a> {
    event: Option<&'a str>,
    user_id: Option<i64>,
}

#[derive(serde::Serialize)]
struct TallyJson {
    count: i64,
    weight: i128,
}

#[derive(serde::Serialize)]
struct PeriodsJson {
    today: TallyJson,
    week: TallyJson,
    month: TallyJson,
    total: TallyJson,
}

impl From<&Tally> for TallyJson {
    fn from(t: &Tally) -> Self {
        Self {
            count: t.count,
            weight: t.weight,
        }
    }
}

impl From<&PeriodTallies> for PeriodsJson {
    fn from(p: &PeriodTallies) -> Self {
        Self {
            today: (&p.today).into(),
            week: (&p.week).into(),
            month: (&p.month).into(),
            total: (&p.total).into(),
        }
    }
}

#[derive(serde::Serialize)]
struct EventRow<'a> {
    event: &'a str,
    #[serde(flatten)]
    tallies: PeriodsJson,
}

/// Per event name, most counted first (ties by name).
fn event_rows(report: &StatsReport) -> Vec<EventRow<'_>> {
    let mut events: Vec<(&String, &PeriodTallies)> = report.events.iter().collect();
    events.sort_by(|a, b| b.1.total.count.cmp(&a.1.total.count).then(a.0.cmp(b.0)));
    events
        .into_iter()
        .map(|(name, p)| EventRow {
            event: name,
            tallies: p.into(),
        })
        .collect()
}

async fn export(
    State(state): State<HttpState>,
    AuthenticatedApp(app): AuthenticatedApp,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let filter = export_filter(&app, &params)?;
    let permit = state.reads.permit(&app)?;
    Ok(csv_response(
        state.core.events.as_ref(),
        &app,
        filter,
        permit,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a failed stats answer says, and its status.
    fn failed(
        written: Result<serde_json::Result<Vec<u8>>, tokio::task::JoinError>,
    ) -> (u16, String) {
        let e = stats_answer(written).expect_err("an error answer");
        (e.status().as_u16(), e.message())
    }

    #[tokio::test]
    async fn each_way_the_stats_answer_can_fail_says_what_happened() {
        let not_json = serde_json::from_str::<u8>("x").expect_err("not a number");
        let (status, json) = failed(Ok(Err(not_json)));
        assert_eq!(status, 500);
        assert!(json.contains("could not be written as JSON"), "{json}");

        let cancelled = tokio::spawn(std::future::pending::<serde_json::Result<Vec<u8>>>());
        cancelled.abort();
        let (status, stopping) = failed(cancelled.await);
        assert_eq!(status, 503);
        assert!(stopping.contains("shutting down"), "{stopping}");

        let panicked = tokio::task::spawn_blocking(|| -> serde_json::Result<Vec<u8>> {
            panic!("a bug in the stats writer")
        });
        let (status, bug) = failed(panicked.await);
        assert_eq!(status, 500);
        assert!(bug.contains("panicked"), "{bug}");

        assert!(json != stopping && stopping != bug && json != bug);
    }
}
