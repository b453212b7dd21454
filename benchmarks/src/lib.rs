//! # parm-benchmarks
//!
//! Measurements of parm, kept as code so anyone can rerun them (see `benchmarks/README.md`).
//!
//! ## Layout
//! - `benches/coding_cpu.rs`: criterion benchmark of the encoder's and decoder's CPU work
//!   per query (everything but the Kafka round trips).
//! - `src/bin/accuracy.rs`: degraded-mode accuracy of every base/parity pair in `models/`;
//!   [`accuracy_report`]: its report (rows, Markdown, JSON); [`accuracy_code`]: every
//!   erasure pattern of a code with r parities per group; [`accuracy_free`] (Markdown:
//!   [`accuracy_free_report`]): the training-free rows (Berrut-coded inference, the code in
//!   [`accuracy_berrut`]; F as its own parity model; an approximate backup).
//! - [`scenario`]: scenario files of the latency benchmark and their runs.
//! - [`latency`]: one run: a mode's topology as `parm` processes, contention, the load.
//! - `src/bin/bench.rs`: the latency benchmark driver (results and summaries);
//!   [`throughput_report`]: the sustained rates and CPU per query of a rate sweep.
//! - [`fault_scenario`], [`fault_run`], [`fault_report`] and `src/bin/faults.rs`: the fault
//!   benchmark (a fault schedule against a live, salted stream; also the memory soak).

pub mod accuracy_berrut;
pub mod accuracy_code;
pub mod accuracy_free;
pub mod accuracy_free_report;
pub mod accuracy_report;
pub mod fault_report;
pub mod fault_run;
pub mod fault_scenario;
pub mod latency;
pub mod scenario;
pub mod throughput_report;
