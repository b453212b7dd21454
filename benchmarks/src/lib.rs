//! # parm-benchmarks
//!
//! Measurements of parm, kept as code so anyone can rerun them (see `benchmarks/README.md`).
//!
//! ## Layout
//! - `benches/coding_cpu.rs`: criterion benchmark of the encoder's and decoder's CPU work
//!   per query (everything but the Kafka round trips).
