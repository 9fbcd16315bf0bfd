//! Event ingest: the pure rules that turn a request body into an event, and the calendar
//! arithmetic behind the stats periods. No I/O here; `crate::core::store` persists the results.

pub mod validate;

pub use validate::{NewEvent, ValidationErrors, validate_event};
