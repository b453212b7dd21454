//! # parm-decoder: joins each coding group and answers every query exactly once
//!
//! Reads group manifests (`parm.groups`), predictions (`parm.predictions`) and parity
//! predictions (`parm.parity-predictions`), all partitioned by group so that one instance
//! sees a whole group, and feeds them to the pure state machine `parm_core::join`. Every
//! decision it makes becomes one record on `parm.results`: `MODEL`, `RECONSTRUCTED` or
//! `UNAVAILABLE`.
//!
//! Offsets are committed only up to the oldest message a still-open group needs, and only
//! once the results decided before are acknowledged. After a start or a rebalance the
//! decoder first replays its partitions up to their end (bounded in time) before letting
//! deadlines act, so a restart answers with real predictions where they exist.
//!
//! ## Layout
//! - [`config`]: the service's flags.
//! - [`intake`]: the one total check of each input record kind (fuzzed).
//! - [`catch_up`]: when a (re)started decoder has replayed its backlog.
//! - [`restore`]: reading back the answers already given, so a replay is not answered twice.
//! - [`service`]: the consume–join–produce loop.

pub mod catch_up;
pub mod config;
pub mod intake;
pub mod restore;
pub mod service;

pub use config::DecoderArgs;
pub use service::run;
