//! # parm: the command-line front of the pipeline
//!
//! One binary, one subcommand per service (`encoder`, `model-worker`, `parity-worker`,
//! `decoder`) plus the tools around them (`topics`, `produce`, `consume`, `demo`). The
//! library half holds what the demo, the benchmarks and the integration tests share.
//!
//! ## Layout
//! - [`mnist`]: the MNIST test images and labels shipped in `models/data/` (IDX files).
//! - [`broker`]: finding or starting a local Kafka broker with `scripts/kafka-local`, or a
//!   cluster of its own (1 or 3 nodes) to stop and kill.
//! - [`launch`]: a deployment of every service as its own process, and its teardown.
//! - [`client`]: producing queries and collecting their results; its `open_loop` part sends
//!   them on a schedule fixed in advance, hedging where asked.
//! - [`report`]: latency percentiles and result counts of a run.
//! - [`hostile`]: one bad client record of every kind, for salting streams in tests and
//!   benchmarks.
//! - [`commands`]: the subcommands.

pub mod broker;
pub mod client;
pub mod commands;
pub mod hostile;
pub mod launch;
pub mod mnist;
pub mod report;
