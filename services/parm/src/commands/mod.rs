//! The tool subcommands (the service subcommands live in their own crates).

pub mod consume;
pub mod demo;
pub mod produce;
pub mod topics;
