//! `parm topics`: create or list a deployment's topics.

use parm_common::kafka::{create_topics, partition_count, KafkaArgs, TopicLayout};

/// Flags of `parm topics`: the deployment (prefix, broker) and what to do with its topics.
#[derive(clap::Args, Debug)]
pub struct TopicsArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(subcommand)]
    pub action: TopicsAction,
}

/// What `parm topics` does.
#[derive(clap::Subcommand, Debug)]
pub enum TopicsAction {
    /// Create every topic of the deployment (existing ones are kept if they match).
    Create(TopicLayout),
    /// Show each topic of the deployment and its partition count.
    List,
}

pub async fn run(args: TopicsArgs) -> anyhow::Result<()> {
    match args.action {
        TopicsAction::Create(layout) => {
            create_topics(&args.kafka, &layout).await?;
            println!("topics of '{}' are ready on {}", args.kafka.topic_prefix, args.kafka.brokers);
        }
        TopicsAction::List => {
            let t = args.kafka.topics();
            for name in [&t.queries, &t.model_queries, &t.parity_queries, &t.groups, &t.predictions, &t.parity_predictions, &t.results, &t.dead_letters, &t.health] {
                match partition_count(&args.kafka, name).await {
                    Ok(n) => println!("{name}\t{n} partitions"),
                    Err(_) => println!("{name}\tmissing"),
                }
            }
        }
    }
    Ok(())
}
