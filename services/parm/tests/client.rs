//! A client reads the results topic from where it is asked to, against the real broker:
//! `parm consume` (from now, or a time ago) must not print an earlier run's results, and
//! `--from beginning` must print them all.

mod support;

use parm::client::Client;
use parm_common::avro;
use parm_common::kafka::{create_topics, KafkaArgs, TopicLayout};
use parm_common::now_ms;
use parm_common::records::{QueryResult, ResultSource};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::BTreeSet;
use std::time::Duration;

fn result(id: &str) -> Vec<u8> {
    let r = QueryResult {
        query_id: id.to_string(),
        group_id: "g".into(),
        source: ResultSource::Model,
        output: vec![0.5, 0.5],
        top1: Some(0),
        sent_at_ms: 1,
        received_at_ms: 2,
        emitted_at_ms: 3,
        deadline_at_ms: 4,
    };
    avro::encode(&r).expect("an encodable result")
}

/// Writes result `id` to partition `partition` of the results topic, stamped `at_ms`.
async fn write(producer: &FutureProducer, kafka: &KafkaArgs, partition: i32, id: &str, at_ms: Option<i64>) {
    let topic = kafka.topics().results;
    let payload = result(id);
    let mut record = FutureRecord::to(&topic).partition(partition).key(id).payload(&payload);
    if let Some(at) = at_ms {
        record = record.timestamp(at);
    }
    producer.send(record, Duration::from_secs(30)).await.map_err(|(e, _)| e).expect("a written result");
}

/// Reads results until `want` are in, then checks that no other comes within `quiet`.
async fn read_all(client: &Client, want: usize, quiet: Duration) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    while ids.len() < want {
        let r = client.next_result(Duration::from_secs(30)).await.expect("reading").expect("a result within 30 s");
        assert!(ids.insert(r.result.query_id.clone()), "{} read twice", r.result.query_id);
    }
    if let Some(extra) = client.next_result(quiet).await.expect("reading") {
        panic!("an unexpected result: {}", extra.result.query_id);
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_started_at_a_time_reads_only_the_results_written_since() {
    let kafka = support::kafka_for("client-since");
    let layout = TopicLayout { query_partitions: 1, model_partitions: 1, parity_partitions: 1, decoder_partitions: 2 };
    create_topics(&kafka, &layout).await.expect("topics");
    let producer = kafka.client_producer(30_000).expect("a producer");
    let minute_ago = i64::try_from(now_ms()).expect("a time") - 60_000;
    // An earlier run: results on both partitions, stamped a minute ago.
    for (p, id) in [(0, "old-0"), (1, "old-1"), (0, "old-2")] {
        write(&producer, &kafka, p, id, Some(minute_ago)).await;
    }
    let since_30s = Client::connect_since(&kafka, now_ms() - 30_000).await.expect("a client since 30 s ago");
    let from_now = Client::connect_since(&kafka, now_ms()).await.expect("a client from now");
    let everything = Client::connect(&kafka).expect("a client from the beginning");
    // This run: partition 1 gets nothing new, so its start is the end of the topic.
    for id in ["new-0", "new-1"] {
        write(&producer, &kafka, 0, id, None).await;
    }
    let new: BTreeSet<String> = ["new-0", "new-1"].map(String::from).into();
    assert_eq!(read_all(&since_30s, 2, Duration::from_secs(2)).await, new, "since 30 s ago");
    assert_eq!(read_all(&from_now, 2, Duration::from_secs(2)).await, new, "from now");
    let all = read_all(&everything, 5, Duration::from_secs(2)).await;
    assert_eq!(all.len(), 5, "from the beginning: {all:?}");
}
