//! Dead letters: an input that a service cannot use is written to `parm.dead-letters` with
//! a readable reason, and the service goes on with the next one.

use crate::records::DeadLetter;
use rdkafka::message::{BorrowedMessage, Message};

/// A dead letter for a consumed message.
pub fn for_message(service: &str, msg: &BorrowedMessage<'_>, query_id: Option<String>, reason: impl Into<String>) -> DeadLetter {
    DeadLetter {
        service: service.to_string(),
        topic: msg.topic().to_string(),
        partition: msg.partition(),
        offset: msg.offset(),
        key: msg.key().and_then(|k| std::str::from_utf8(k).ok()).map(str::to_string),
        query_id,
        reason: reason.into(),
        payload: msg.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        at_ms: crate::now_ms() as i64,
    }
}

/// Sends a dead letter (and logs why); await the returned future before committing past it.
pub async fn send(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    letter: &DeadLetter,
) -> anyhow::Result<rdkafka::producer::DeliveryFuture> {
    tracing::warn!(service = %letter.service, topic = %letter.topic, partition = letter.partition,
        offset = letter.offset, reason = %letter.reason, "dead letter");
    metrics::counter!(crate::metrics::names::DEAD_LETTERS, "service" => letter.service.clone()).increment(1);
    let payload = crate::avro::encode(letter)?;
    let key = letter.query_id.clone().or_else(|| letter.key.clone()).unwrap_or_default();
    crate::kafka::send(producer, topic, None, &key, &payload, rdkafka::message::OwnedHeaders::new()).await
}
