//! CSV export over HTTP, for the event API and the dashboard's download link alike: the
//! same query parameters filter both, and both stream the rows without building the file.

use std::collections::HashMap;

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use jiff::Timestamp;

use super::error::ApiError;
use super::query::{event_param, int_param};
use super::reads::ReadPermit;
use crate::core::ingest::validate::parse_created_at;
use crate::core::registry::AppInfo;
use crate::core::storage::{EventStore, ExportBatches, ExportFilter};

/// Reads the export query: `from`, `to` (instants, or dates in the application's zone),
/// `event` and `user_id`.
pub fn export_filter(
    app: &AppInfo,
    params: &HashMap<String, String>,
) -> Result<ExportFilter, ApiError> {
    Ok(ExportFilter {
        from: bound(app, "from", params.get("from"), false)?,
        to: bound(app, "to", params.get("to"), true)?,
        event: event_param(params, "event")?,
        user_id: int_param(params, "user_id")?,
    })
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

/// Streams an application's events as RFC 4180 CSV without building it in memory.
/// `permit` is the export's place among its Application's and the server's heavy reads,
/// held until the export stops streaming: at the end, or once its client is gone. A client that stops reading is
/// closed after `--http-write-timeout` without progress (see `serve`), which ends the
/// export with it.
pub fn csv_response(
    events: &dyn EventStore,
    app: &AppInfo,
    filter: ExportFilter,
    permit: ReadPermit,
) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let rows = events.export(app.num, filter);
    tokio::spawn(write_rows(
        rows,
        Chunks {
            tx,
            _permit: permit,
        },
    ));
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

/// Where an export's rows go: the response body.
struct Chunks {
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    /// Given back when the export stops.
    _permit: ReadPermit,
}

impl Chunks {
    /// Hands one chunk to the response; false once the client is gone (its connection
    /// closed, also by the write timeout).
    async fn send(&self, chunk: Result<Bytes, std::io::Error>) -> bool {
        self.tx.send(chunk).await.is_ok()
    }
}

/// Sends the rows in chunks of about 60 KiB; stops when the client goes away, which drops
/// `rows` and so stops the store's reader.
async fn write_rows(mut rows: ExportBatches, out: Chunks) {
    let mut buf = Vec::with_capacity(64 * 1024);
    csv_row(&mut buf, ["created_at", "event", "weight", "user_id"]);
    while let Some(batch) = rows.next().await {
        let batch = match batch {
            Ok(batch) => batch,
            Err(err) => {
                tracing::error!(error = %err, "export stopped");
                out.send(Err(std::io::Error::other(err.to_string()))).await;
                return;
            }
        };
        for e in batch {
            let user = e.value.user_id.map(|u| u.to_string()).unwrap_or_default();
            let (at, weight) = (e.at.to_string(), e.value.weight.to_string());
            let event = neutralise_formula(&e.value.event);
            csv_row(&mut buf, [&at, &event, &weight, &user]);
            if buf.len() >= 60 * 1024 && !out.send(Ok(Bytes::from(std::mem::take(&mut buf)))).await
            {
                return;
            }
        }
    }
    if !buf.is_empty() {
        out.send(Ok(Bytes::from(buf))).await;
    }
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
