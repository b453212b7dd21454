//! # parm-common: what every parm service shares
//!
//! ## Layout
//!
//! - [`avro`]: schemas from `schemas/*.avsc` and the binary codec.
//! - [`records`]: the Rust form of every record on every topic.
//! - [`kafka`]: connection settings, producer/consumer setup, offsets, headers.
//! - [`topics`]: a deployment's topic names and layout, creating them, partition counts.
//! - [`quarantine`]: a record whose handler panics is dead-lettered, not replayed forever.
//! - [`rebalance`]: the consumer context: rebalances that keep state, consumer lag,
//!   rejoining after a fencing.
//! - [`trouble`]: which Kafka errors are ridden out and which end a service.
//! - [`telemetry`]: logging, OpenTelemetry tracing with W3C `traceparent` in Kafka headers.
//! - [`metrics`]: the Prometheus `/metrics` endpoint and consumer-lag gauges.
//! - [`model`]: model manifests from `models/` and tract inference with pinned batch sizes.
//! - [`parity_code`]: the r parity models of a deployment's code, checked to be one code.
//! - [`dead_letter`]: building `parm.dead-letters` records.
//! - [`delivery`]: at-least-once and exactly-once (Kafka transactions) delivery.
//! - [`supervise`]: an exactly-once session that failed is replaced by a fresh one.
//! - [`outbox`]: produced batches whose acknowledgement gates offset commits.
//! - [`service_args`]: the flags every service shares.
//! - [`shutdown`]: one signal that tells every loop to stop cleanly.

pub mod avro;
pub mod dead_letter;
pub mod delivery;
pub mod kafka;
pub mod metrics;
pub mod model;
pub mod outbox;
pub mod parity_code;
pub mod quarantine;
pub mod rebalance;
pub mod records;
pub mod service_args;
pub mod shutdown;
pub mod supervise;
pub mod telemetry;
pub mod topics;
pub mod trouble;

/// Milliseconds since the Unix epoch: the one clock every service uses.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
