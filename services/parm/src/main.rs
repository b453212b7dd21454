//! The `parm` binary. Run `parm --help`, or `parm SUBCOMMAND --help` for each part.

use clap::{Parser, Subcommand};
use parm::commands::{consume, demo, produce, topics};
use parm_common::shutdown;
use parm_common::telemetry;
use parm_worker::Role;

/// parm: erasure-coded prediction serving over Kafka.
///
/// Queries produced to PREFIX.queries are grouped k at a time; each group gets a parity
/// query served by a parity model, so a late or lost prediction is reconstructed from the
/// others. Every query gets exactly one result on PREFIX.results: MODEL, RECONSTRUCTED or
/// UNAVAILABLE. Every flag can also be set with the PARM_* variable shown in its help.
///
/// Quick start: `parm demo` (starts a local broker and the whole pipeline).
#[derive(Parser, Debug)]
#[command(name = "parm", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The subcommands: the four services, and the tools around them.
#[derive(Subcommand, Debug)]
enum Command {
    /// Group queries, send members to model workers, parity queries to parity workers, manifests to the decoder.
    Encoder(parm_encoder::EncoderArgs),
    /// Run the deployed model on micro-batches of member queries.
    ModelWorker(parm_worker::WorkerArgs),
    /// Run the parity model on micro-batches of parity queries.
    ParityWorker(parm_worker::WorkerArgs),
    /// Join each group's predictions and answer every query once (MODEL, RECONSTRUCTED or UNAVAILABLE).
    Decoder(parm_decoder::DecoderArgs),
    /// Create or list a deployment's topics.
    Topics(topics::TopicsArgs),
    /// Send MNIST test images as queries.
    Produce(produce::ProduceArgs),
    /// Print results as JSON lines.
    Consume(consume::ConsumeArgs),
    /// Run the whole pipeline locally, send queries, and summarize what came back.
    Demo(demo::DemoArgs),
}

fn main() {
    let cli = Cli::parse();
    telemetry::init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a Tokio runtime");
    if let Err(e) = runtime.block_on(run(cli.command)) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Encoder(a) => {
            let _t = a.common.setup("encoder")?;
            parm_encoder::run(a, shutdown::on_signals()).await
        }
        Command::ModelWorker(a) => {
            let _t = a.common.setup("model-worker")?;
            parm_worker::run(a, Role::Model, shutdown::on_signals()).await
        }
        Command::ParityWorker(a) => {
            let _t = a.common.setup("parity-worker")?;
            parm_worker::run(a, Role::Parity, shutdown::on_signals()).await
        }
        Command::Decoder(a) => {
            let _t = a.common.setup("decoder")?;
            parm_decoder::run(a, shutdown::on_signals()).await
        }
        Command::Topics(a) => topics::run(a).await,
        Command::Produce(a) => produce::run(a).await,
        Command::Consume(a) => consume::run(a).await,
        Command::Demo(a) => demo::run(a).await,
    }
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    /// The README promises a `PARM_*` variable for every flag of every subcommand.
    #[test]
    fn every_flag_of_every_subcommand_has_a_parm_variable() {
        fn missing(cmd: &clap::Command, path: &str, out: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if arg.get_long().is_none() || id == "help" || id == "version" {
                    continue;
                }
                match arg.get_env().and_then(|e| e.to_str()) {
                    Some(env) if env.starts_with("PARM_") => {}
                    _ => out.push(format!("{path} --{}", arg.get_long().unwrap_or(id))),
                }
            }
            for sub in cmd.get_subcommands() {
                missing(sub, &format!("{path} {}", sub.get_name()), out);
            }
        }
        let mut out = Vec::new();
        missing(&Cli::command(), "parm", &mut out);
        assert!(out.is_empty(), "flags without a PARM_* variable: {out:?}");
    }
}
