//! The flags every service shares: where Kafka is, where spans and metrics go, and how
//! results are delivered.

use crate::delivery::DeliveryArgs;
use crate::kafka::KafkaArgs;
use crate::metrics::{self, MetricsArgs};
use crate::telemetry::{self, TelemetryArgs, TelemetryGuard};

/// Flattened into each service's own flags.
#[derive(clap::Args, Debug, Clone)]
pub struct ServiceArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    #[command(flatten)]
    pub metrics: MetricsArgs,
    #[command(flatten)]
    pub delivery: DeliveryArgs,
}

impl ServiceArgs {
    /// Starts the metrics endpoint and span export of a service named `name`; keep the
    /// guard alive while the service runs. Must run inside Tokio.
    pub fn setup(&self, name: &str) -> anyhow::Result<TelemetryGuard> {
        metrics::init(&self.metrics)?;
        telemetry::init_tracing(name, &self.telemetry)
    }
}
