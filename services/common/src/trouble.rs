//! Which Kafka errors a service rides out and which end it.
//!
//! librdkafka reports many errors that it recovers from by itself: all brokers down, a
//! transport failure, a request timeout, a coordinator or leader that moved, a partition
//! being reassigned. It reconnects, re-resolves and retries on its own (its
//! INTRODUCTION.md, "Error handling"), so a service logs them, rate-limited, and keeps
//! going. Only what cannot heal ends a service: a fatal (idempotent producer) error,
//! failed authentication or authorization, a fenced static member, bad configuration.
//! Each of those comes with a message that says what to do.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

/// What a service should do about a Kafka error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Severity {
    /// librdkafka heals it by itself: log it and go on.
    Transient,
    /// It will not heal: stop, with this advice for the operator.
    Fatal(String),
}

/// Classifies an error seen by a consumer poll, a produce call or a delivery report.
pub fn classify(e: &KafkaError) -> Severity {
    use RDKafkaErrorCode as C;
    let code = match e {
        KafkaError::MessageConsumptionFatal(code) => {
            return Severity::Fatal(format!("librdkafka reported a fatal consumer error ({code}); restart the service"));
        }
        KafkaError::ClientConfig(..) | KafkaError::ClientCreation(_) => {
            return Severity::Fatal("the Kafka client configuration is invalid; check --kafka-set and --brokers".into());
        }
        other => match other.rdkafka_error_code() {
            Some(code) => code,
            None => return Severity::Transient,
        },
    };
    match code {
        C::Fatal => Severity::Fatal(
            "the idempotent producer hit a fatal error (the broker lost its state or another producer took over); \
             restart the service: unacknowledged inputs are replayed"
                .into(),
        ),
        C::Authentication | C::SaslAuthenticationFailed => {
            Severity::Fatal("Kafka authentication failed: check the security.protocol and sasl.* settings (--kafka-set)".into())
        }
        C::TopicAuthorizationFailed | C::GroupAuthorizationFailed | C::ClusterAuthorizationFailed | C::TransactionalIdAuthorizationFailed => {
            Severity::Fatal(format!("Kafka refused access ({code}): grant this principal read/write on the parm topics and groups"))
        }
        C::FencedInstanceId => Severity::Fatal(
            "another process joined the consumer group with the same --instance-id; give every instance its own id".into(),
        ),
        C::ProducerFenced | C::Fenced | C::TransactionCoordinatorFenced => {
            Severity::Fatal("this producer was fenced by a newer instance with the same identity; stop the duplicate".into())
        }
        _ => Severity::Transient,
    }
}

/// Whether the broker fenced this consumer's static membership (`--instance-id`): a
/// service then rejoins with a fresh consumer (`kafka::Rejoin`) instead of stopping.
pub fn is_fenced_instance(e: &KafkaError) -> bool {
    matches!(e, KafkaError::MessageConsumptionFatal(RDKafkaErrorCode::FencedInstanceId))
        || e.rdkafka_error_code() == Some(RDKafkaErrorCode::FencedInstanceId)
}

/// Rides out a transient error (logged, at most once per kind every `LOG_EVERY`, with the
/// number seen meanwhile) and turns a fatal one into the error that ends the service.
pub fn ride_out(e: KafkaError, service: &str, doing: &str) -> anyhow::Result<()> {
    match classify(&e) {
        Severity::Transient => {
            LIMITER.note(service, doing, &e);
            crate::metrics::kafka_trouble(service);
            Ok(())
        }
        Severity::Fatal(advice) => Err(anyhow::anyhow!("{service}: {doing}: {e}: {advice}")),
    }
}

/// How often one kind of transient error is logged.
const LOG_EVERY: Duration = Duration::from_secs(5);

static LIMITER: LazyLock<RateLimiter> = LazyLock::new(|| RateLimiter { seen: Mutex::new(HashMap::new()) });

/// Per error kind: when it was last logged and how many went unlogged since.
struct RateLimiter {
    seen: Mutex<HashMap<String, (Instant, u64)>>,
}

impl RateLimiter {
    fn note(&self, service: &str, doing: &str, e: &KafkaError) {
        let kind = format!("{doing}: {e}");
        let Ok(mut seen) = self.seen.lock() else { return };
        let now = Instant::now();
        match seen.get_mut(&kind) {
            Some((at, suppressed)) if now.duration_since(*at) < LOG_EVERY => *suppressed += 1,
            Some((at, suppressed)) => {
                tracing::warn!(%service, repeated = *suppressed + 1, "Kafka trouble, riding it out: {kind}");
                *at = now;
                *suppressed = 0;
            }
            None => {
                tracing::warn!(%service, "Kafka trouble, riding it out (librdkafka retries by itself): {kind}");
                seen.insert(kind, (now, 0));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outages_are_transient_and_auth_or_fatal_errors_are_not() {
        for code in [RDKafkaErrorCode::AllBrokersDown, RDKafkaErrorCode::BrokerTransportFailure, RDKafkaErrorCode::RequestTimedOut, RDKafkaErrorCode::NotCoordinator, RDKafkaErrorCode::NotLeaderForPartition, RDKafkaErrorCode::UnknownTopicOrPartition] {
            assert_eq!(classify(&KafkaError::MessageConsumption(code)), Severity::Transient, "{code:?}");
            assert!(ride_out(KafkaError::MessageConsumption(code), "test", "reading").is_ok());
        }
        for code in [RDKafkaErrorCode::Fatal, RDKafkaErrorCode::SaslAuthenticationFailed, RDKafkaErrorCode::TopicAuthorizationFailed, RDKafkaErrorCode::FencedInstanceId] {
            assert!(matches!(classify(&KafkaError::MessageProduction(code)), Severity::Fatal(_)), "{code:?}");
        }
        assert!(matches!(classify(&KafkaError::MessageConsumptionFatal(RDKafkaErrorCode::AllBrokersDown)), Severity::Fatal(_)));
        let err = ride_out(KafkaError::MessageConsumption(RDKafkaErrorCode::Authentication), "encoder", "reading queries").unwrap_err();
        assert!(err.to_string().contains("sasl"), "{err}");
    }
}
