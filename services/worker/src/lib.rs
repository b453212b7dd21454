//! # parm-worker: runs a model on micro-batches of queries
//!
//! The same machinery serves both kinds of worker: a **model worker** runs the deployed
//! model F on `parm.model-queries` and writes `parm.predictions`; a **parity worker** runs
//! the parity model Fp on `parm.parity-queries` and writes `parm.parity-predictions`.
//! Each prediction goes to the partition of its group's decoder.
//!
//! A batch closes when it is full or its first query has waited `max_wait_ms`; inference
//! runs on a blocking thread with a tract plan pinned to the batch size. Queries past their
//! hard deadline are skipped (the decoder has answered them already), and with
//! `--skip-answered` so is work nobody waits for any more (`parm_core::answered`). A straggler can be
//! simulated with [`delay::DelayModel`] for tests and benchmarks.
//!
//! ## Layout
//! - [`config`]: flags, and the role (model or parity).
//! - [`delay`]: seeded injected service time: a per-batch distribution and slow episodes.
//! - [`intake`]: the one total check of every input record (fuzzed).
//! - [`inference`]: a batch run that one bad query costs only itself.
//! - [`health`]: timing of its own batches and reports of whether it is slow
//!   (`--report-health`), for an encoder that routes coding groups around slow workers.
//! - [`service`]: the consume–batch–infer–produce loop.

pub mod config;
pub mod delay;
pub mod health;
pub mod inference;
pub mod intake;
pub mod service;

pub use config::{Role, WorkerArgs};
pub use service::run;
