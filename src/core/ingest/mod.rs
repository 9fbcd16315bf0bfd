//! Event ingest: the pure rules that turn a request body into an event. No I/O here;
//! `crate::core::store::events` persists the results, dated by `crate::core::calendar`.

pub mod counts;
pub mod validate;

pub use validate::{NewEvent, ValidationErrors, validate_event};
