//! Event ingest: the pure rules that turn a request body into an event, and the calendar
//! arithmetic behind the stats periods. No I/O here; `crate::store` persists the results.

pub mod periods;
pub mod validate;

pub use validate::{NewEvent, ValidationErrors, validate_event};
