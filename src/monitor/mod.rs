//! Heartbeat monitors: the pure state machine and the deadline scheduler.
