//! # parm-encoder: forms coding groups and writes their parts
//!
//! Reads client queries from `parm.queries`, groups every k of them (or fewer after a
//! linger) with `parm_core::grouping`, and for each group writes:
//! - each member to `parm.model-queries`, on consecutive partitions so that the members
//!   of a group reach different model workers;
//! - the parity query P = E(X1..Xk) to `parm.parity-queries`;
//! - the group manifest to `parm.groups`, so the decoder knows every query and deadline
//!   even if no prediction ever arrives.
//!
//! An input offset is committed only once all of its group's records are acknowledged.
//! Bad queries become dead letters; every other query goes on.
//!
//! ## Layout
//! - [`config`]: flags and what is read from the parity model's manifest.
//! - [`service`]: the consume–group–produce loop.

pub mod config;
pub mod service;

pub use config::EncoderArgs;
pub use service::run;
