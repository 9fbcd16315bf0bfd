//! Alert delivery: durable outbox, email and webhook.
