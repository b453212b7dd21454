//! Dead letters: an input that a service cannot use is written to `parm.dead-letters` with
//! a readable reason, and the service goes on with the next one.

use crate::records::DeadLetter;
use rdkafka::message::{BorrowedMessage, Message};

/// The most of a bad record's bytes a dead letter keeps: a dead letter must always fit in
/// a Kafka record, whatever the record it describes (the rest is cut, and the reason says so).
pub const MAX_PAYLOAD_BYTES: usize = 256 * 1024;
/// The most of a key, an id or a reason a dead letter keeps.
const MAX_TEXT_BYTES: usize = 1024;

/// A dead letter for a consumed message.
pub fn for_message(service: &str, msg: &BorrowedMessage<'_>, query_id: Option<String>, reason: impl Into<String>) -> DeadLetter {
    let payload = msg.payload().unwrap_or_default();
    let mut reason = cut(reason.into(), MAX_TEXT_BYTES);
    if payload.len() > MAX_PAYLOAD_BYTES {
        reason.push_str(&format!(" (payload of {} bytes cut to its first {MAX_PAYLOAD_BYTES})", payload.len()));
    }
    DeadLetter {
        service: service.to_string(),
        topic: msg.topic().to_string(),
        partition: msg.partition(),
        offset: msg.offset(),
        key: msg.key().and_then(|k| std::str::from_utf8(k).ok()).map(|k| cut(k.to_string(), MAX_TEXT_BYTES)),
        query_id: query_id.map(|id| cut(id, MAX_TEXT_BYTES)),
        reason,
        payload: payload.get(..MAX_PAYLOAD_BYTES).unwrap_or(payload).to_vec(),
        at_ms: crate::now_ms() as i64,
    }
}

/// `text` cut to at most `max` bytes, on a character boundary.
fn cut(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
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

#[cfg(test)]
mod tests {
    #[test]
    fn text_is_cut_on_a_character_boundary() {
        assert_eq!(super::cut("héllo".into(), 2), "h");
        assert_eq!(super::cut("abc".into(), 10), "abc");
    }
}
