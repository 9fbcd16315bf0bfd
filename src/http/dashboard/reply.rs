//! Whole-page answers: a page with its status, a page in the layout, a message, the 404.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use maud::Markup;

use super::pages::{self, Section};
use super::session::Viewer;

/// A whole page with `status`.
pub fn page(status: StatusCode, markup: Markup) -> Response {
    (status, Html(markup.into_string())).into_response()
}

/// A page in the layout, answered 200.
pub fn in_layout(viewer: &Viewer, title: &str, section: Section, body: Markup) -> Response {
    page(StatusCode::OK, pages::layout(title, viewer, section, body))
}

/// A message page, in the layout, with `status`.
pub fn message(
    status: StatusCode,
    viewer: &Viewer,
    section: Section,
    title: &str,
    text: &str,
) -> Response {
    page(
        status,
        pages::layout(title, viewer, section, pages::message(title, text)),
    )
}

/// The 404 page: the same whether the thing is missing or hidden from this viewer.
pub fn not_found(viewer: &Viewer, what: &str) -> Response {
    let text = format!("There is no {what} here that you may see.");
    message(
        StatusCode::NOT_FOUND,
        viewer,
        Section::Overview,
        "Not found",
        &text,
    )
}
