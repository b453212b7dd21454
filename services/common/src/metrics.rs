//! The Prometheus `/metrics` endpoint every service serves, and the metric names.
//!
//! Names are prefixed by service (`parm_encoder_…`, `parm_worker_…`, `parm_decoder_…`) so
//! that services running in one process (the tests, the demo) never collide.

use metrics_exporter_prometheus::PrometheusBuilder;
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// Metrics settings, flattened into every service's flags.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct MetricsArgs {
    /// Address to serve Prometheus metrics on (e.g. 0.0.0.0:9100); none: no endpoint.
    #[arg(long, env = "PARM_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
}

/// Starts the `/metrics` endpoint if an address is configured. Must run inside Tokio.
pub fn init(args: &MetricsArgs) -> anyhow::Result<()> {
    let Some(addr) = args.metrics_addr else { return Ok(()) };
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets(&[
            0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
        ])
        .map_err(|e| anyhow::anyhow!("metrics buckets: {e}"))?
        .install()
        .map_err(|e| anyhow::anyhow!("serving metrics on {addr}: {e} (is the port in use?)"))?;
    tracing::info!(%addr, "serving Prometheus metrics at /metrics");
    Ok(())
}

/// Counts a service keeps beside its metrics for the summary it logs when it stops: the
/// metrics are exported only with `--metrics-addr`, the log line always (the benchmark reads
/// it from the services' logs).
#[derive(Default)]
pub struct Tally(BTreeMap<&'static str, u64>);

/// As a map (`{"full": 3, "solo": 1}`), for the log line.
impl std::fmt::Debug for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(&self.0).finish()
    }
}

impl Tally {
    pub fn add(&mut self, what: &'static str, n: u64) {
        *self.0.entry(what).or_default() += n;
    }
}

/// Every metric the services export, for docs and the dashboard check.
pub const ALL: &[&str] = &[
    names::ENCODER_QUERIES,
    names::ENCODER_GROUPS,
    names::ENCODER_PARITY_RESENT,
    names::DEAD_LETTERS,
    names::WORKER_QUERIES,
    names::WORKER_SKIPPED,
    names::WORKER_BATCH_SIZE,
    names::WORKER_INFERENCE_SECONDS,
    names::DECODER_RESULTS,
    names::DECODER_LATENCY_SECONDS,
    names::DECODER_LATE,
    names::DECODER_LATE_AGREED,
    names::DECODER_EVICTED,
    names::DECODER_AGREEMENT,
    names::DECODER_OPEN_GROUPS,
    names::DECODER_LAGGING_PARTITIONS,
    names::CONSUMER_LAG,
    names::KAFKA_TROUBLE,
    names::QUARANTINED,
    names::TRANSACTIONS_COMMITTED,
    names::TRANSACTIONS_ABORTED,
    names::TRANSACTION_COMMIT_SECONDS,
    names::SESSION_RESTARTS,
    names::DECODER_SUPPRESSED,
    names::DECODER_RESTORE_SECONDS,
];

/// Counts a record whose handler panicked and that was set aside (see `quarantine`).
pub fn quarantined() {
    metrics::counter!(names::QUARANTINED).increment(1);
}

/// Counts a transient Kafka error that a service rode out (see `trouble`).
pub fn kafka_trouble(service: &str) {
    metrics::counter!(names::KAFKA_TROUBLE, "service" => service.to_string()).increment(1);
}

pub mod names {
    pub const ENCODER_QUERIES: &str = "parm_encoder_queries_total";
    /// label `kind`: full | partial | solo (a query bound for a slow worker, grouped alone)
    pub const ENCODER_GROUPS: &str = "parm_encoder_groups_total";
    /// parity queries sent again because their parity worker turned slow
    pub const ENCODER_PARITY_RESENT: &str = "parm_encoder_parity_resent_total";
    /// label `service`
    pub const DEAD_LETTERS: &str = "parm_dead_letters_total";
    /// label `role`: model | parity
    pub const WORKER_QUERIES: &str = "parm_worker_queries_total";
    /// labels `role`, `reason`: answered | expired
    pub const WORKER_SKIPPED: &str = "parm_worker_skipped_total";
    pub const WORKER_BATCH_SIZE: &str = "parm_worker_batch_size";
    pub const WORKER_INFERENCE_SECONDS: &str = "parm_worker_inference_seconds";
    /// label `source`: MODEL | RECONSTRUCTED | UNAVAILABLE
    pub const DECODER_RESULTS: &str = "parm_decoder_results_total";
    /// label `source`; from the encoder's receipt of the query to the decision
    pub const DECODER_LATENCY_SECONDS: &str = "parm_decoder_latency_seconds";
    pub const DECODER_LATE: &str = "parm_decoder_late_predictions_total";
    pub const DECODER_LATE_AGREED: &str = "parm_decoder_late_agreed_total";
    /// groups settled early because the join held `--max-groups`
    pub const DECODER_EVICTED: &str = "parm_decoder_evicted_groups_total";
    pub const DECODER_AGREEMENT: &str = "parm_decoder_reconstruction_agreement_ratio";
    pub const DECODER_OPEN_GROUPS: &str = "parm_decoder_open_groups";
    pub const DECODER_LAGGING_PARTITIONS: &str = "parm_decoder_lagging_partitions";
    /// labels `group` (consumer group), `topic`, `partition`
    pub const CONSUMER_LAG: &str = "parm_consumer_lag";
    /// label `service`: transient Kafka errors ridden out (brokers down, timeouts, moves)
    pub const KAFKA_TROUBLE: &str = "parm_kafka_transient_errors_total";
    /// records whose handler panicked: dead-lettered instead of ending the service
    pub const QUARANTINED: &str = "parm_quarantined_records_total";
    /// exactly-once: transactions committed and aborted, and how long a commit takes
    pub const TRANSACTIONS_COMMITTED: &str = "parm_transactions_committed_total";
    pub const TRANSACTIONS_ABORTED: &str = "parm_transactions_aborted_total";
    pub const TRANSACTION_COMMIT_SECONDS: &str = "parm_transaction_commit_seconds";
    /// exactly-once: sessions started afresh after a transaction failure
    pub const SESSION_RESTARTS: &str = "parm_session_restarts_total";
    /// answers not written because the query was already answered (a replay)
    pub const DECODER_SUPPRESSED: &str = "parm_decoder_suppressed_duplicates_total";
    /// reading back the answers already given when partitions are (re)assigned
    pub const DECODER_RESTORE_SECONDS: &str = "parm_decoder_restore_seconds";
}

#[cfg(test)]
mod tests {
    use super::Tally;

    #[test]
    fn a_tally_adds_up_and_prints_as_a_map() {
        let mut t = Tally::default();
        t.add("solo", 1);
        t.add("full", 2);
        t.add("solo", 3);
        assert_eq!(format!("{t:?}"), r#"{"full": 2, "solo": 4}"#);
    }
}
