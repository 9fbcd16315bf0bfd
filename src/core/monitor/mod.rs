//! Heartbeat monitors: the pure state machine, the deadline scheduler and the engine that
//! persists state and carries out effects.

pub mod define;
pub mod engine;
pub mod history;
pub mod jobs;
pub mod schedule;
pub mod sparse;
pub mod state;
