//! # parm-encoder: forms coding groups and writes their parts
//!
//! Reads client queries from `parm.queries`, groups every k of them (or fewer after a
//! linger) with `parm_core::grouping`, and writes:
//! - each query to `parm.model-queries` the moment it arrives (the linger never delays a
//!   real prediction), round-robin over the partitions so that the members of a group
//!   reach different model workers, with partners that change from round to round
//!   (`parm_core::grouping::member_partition`): two workers slow at the same time then
//!   share few groups;
//! - when the group closes, the parity query P = E(X1..Xk) to `parm.parity-queries` and
//!   the group manifest to `parm.groups`, so the decoder knows every query and deadline
//!   even if no prediction ever arrives.
//!
//! With `--route-by-health` it also reads the workers' health reports (`parm_core::health`): a query
//! bound for a slow model worker is grouped alone, parity goes to healthy parity workers, and
//! a parity worker that turns slow has its recent parity queries sent again elsewhere.
//!
//! An input offset is committed only once all of its group's records are acknowledged.
//! Bad queries become dead letters; every other query goes on.
//!
//! ## Layout
//! - [`config`]: flags and what is read from the parity model's manifest.
//! - [`intake`]: what a client record must be to be served (pure, fuzzed).
//! - [`service`]: the consume–group–produce loop.

pub mod config;
pub mod intake;
pub mod service;

pub use config::EncoderArgs;
pub use service::run;
