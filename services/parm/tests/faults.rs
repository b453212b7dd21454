//! Faults against the real broker: the broker itself stopped and started mid-stream,
//! hostile records salted into a live stream, and a misconfigured parity worker.

mod support;

use parm::broker::Cluster;
use parm::launch::Signal;
use parm::hostile::{self, Hostile};
use parm_common::avro;
use parm_common::records::{Query, ResultSource, WireTensor};
use std::collections::HashMap;
use std::time::Duration;
use support::{count, mnist, tally, top1_of_f, Pipeline};

/// A port pair of its own for the broker this file stops (the shared one is 9092/9093).
const OWN_BROKER_PORT: u16 = 19192;

/// The broker is stopped for 10 s mid-stream (`PARM_TEST_OUTAGE_S` sets another length,
/// e.g. 120) and started again. Every service rides it out (none exits), and every query
/// sent before, during and after the outage gets exactly one result, from the model or
/// reconstructed, with the model's answer where it is MODEL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_stream_ends_no_service_and_every_query_gets_one_result() {
    let outage = Duration::from_secs(std::env::var("PARM_TEST_OUTAGE_S").ok().and_then(|s| s.parse().ok()).unwrap_or(10));
    let broker = tokio::task::block_in_place(|| Cluster::start(OWN_BROKER_PORT, 1)).expect("starting a broker of this test's own");
    let mut p = Pipeline::start_on(&broker.bootstrap, "outage", 2, 1, |s| {
        // Queries in flight during the outage are answered after it, not UNAVAILABLE.
        let hard = (outage.as_millis() as u64 + 60_000).to_string();
        s.encoder_args.extend(["--hard-deadline-ms".to_string(), hard.clone(), "--max-deadline-ms".to_string(), hard.clone()]);
        s.decoder_args.extend(["--max-deadline-ms".to_string(), hard]);
    })
    .await;
    let before = p.send("before", 0..40, 40.0, None).await;
    let (results, _) = p.results_for(&before, Duration::from_secs(60)).await;
    assert_eq!(results.len(), before.len());

    tokio::task::block_in_place(|| broker.stop_all()).expect("stopping the broker");
    // Queries sent while the broker is down wait in the client's producer queue.
    let mut during = HashMap::new();
    let mut pending = Vec::new();
    for i in 40..70 {
        let id = format!("during-{i}");
        let (f, _) = p.client.enqueue(&id, &mnist().images[i], None).await.expect("queued while the broker is down");
        pending.push(f);
        during.insert(id, i);
        tokio::time::sleep(outage / 30).await;
    }
    tokio::task::block_in_place(|| broker.start_all()).expect("starting the broker again");
    for f in pending {
        parm_common::kafka::delivered(f, "queries").await.expect("a query queued during the outage is delivered after it");
    }
    let after = p.send("after", 70..110, 40.0, None).await;

    let mut rest = during;
    rest.extend(after);
    let (results, duplicates) = p.results_for(&rest, Duration::from_secs(120)).await;
    let mut all = before.clone();
    all.extend(rest.clone());
    tokio::task::block_in_place(|| p.deployment.check_alive()).expect("every service rode out the outage");
    eprintln!(
        "during and after a broker restart: {} results for {} queries, {duplicates} duplicates, {}",
        results.len(),
        rest.len(),
        tally(&results)
    );
    // Nothing more comes: no query of any phase is answered twice.
    let extra = p.client.collect(&["never".to_string()].into(), Duration::from_secs(2)).await.unwrap();
    let repeated = extra.iter().filter(|r| all.contains_key(&r.result.query_id)).count();
    assert_eq!(duplicates + repeated, 0, "exactly one result per query");
    assert_eq!(count(&results, ResultSource::Unavailable), 0, "no query's hard deadline passed");
    for (id, idx) in &rest {
        let r = &results[id].result;
        if r.source == ResultSource::Model {
            assert_eq!(r.top1, Some(top1_of_f(&mnist().images[*idx])), "{id}");
        }
    }
}

/// Every kind of hostile record a client can send, salted between valid queries: each is
/// a dead letter of the encoder with its reason and bytes, and every valid query is
/// answered. The 3e38 pixels once crash-looped the encoder (their sum is infinite).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_records_salted_into_a_live_stream_are_dead_letters_and_the_rest_is_answered() {
    let mut p = Pipeline::start("salted", 2, 1, |_| {}).await;
    let q = |id: String, tensor: WireTensor, deadline_ms: Option<i64>| avro::encode(&Query { id, tensor, deadline_ms, sent_at_ms: 0 }).unwrap();
    // Two of the 3e38 kind: the second would meet a crash-looping encoder.
    let bad: Vec<Hostile> = [hostile::every_kind("a"), hostile::every_kind("b")].concat();
    let data = mnist();
    let mut sent = HashMap::new();
    for (i, h) in bad.iter().enumerate() {
        p.client.send_raw(&h.key, &h.payload).await.unwrap();
        for j in 0..3 {
            let n = i * 3 + j;
            let id = format!("ok-{n}");
            p.client.send(&id, &data.images[n], None).await.unwrap();
            sent.insert(id, n);
        }
    }
    // A deadline of 10^15 ms is clamped (to --max-deadline-ms): served, not refused.
    p.client.send_raw("far", &q("far".into(), WireTensor::from_tensor(&data.images[99]), Some(1_000_000_000_000_000))).await.unwrap();
    sent.insert("far".into(), 99);

    let (results, duplicates) = p.results_for(&sent, Duration::from_secs(60)).await;
    assert_eq!(duplicates, 0);
    let far = &results["far"].result;
    assert!(far.deadline_at_ms - far.received_at_ms <= 60_000, "the deadline was clamped: {far:?}");
    let letters = p.dead_letters(bad.len(), Duration::from_secs(30)).await;
    for Hostile { key, payload, reason } in &bad {
        let d = letters.get(key).unwrap_or_else(|| panic!("no dead letter for {key}; got {:?}", letters.keys()));
        assert!(d.reason.contains(reason), "{key}: reason '{}' should mention '{reason}'", d.reason);
        assert_eq!(&d.payload, payload, "{key}: the dead letter keeps the original bytes");
        assert_eq!(d.service, "encoder");
    }
    tokio::task::block_in_place(|| p.deployment.check_alive()).expect("no service died");
}

/// An encoder on one parity model with a parity worker serving another: of another code
/// (addition vs concatenation, both k = 2), or of the same code but other weights (the
/// Fashion-MNIST parity model, also addition with k = 2: only the parity model's identity,
/// name and CRC-32 of its file, tells them apart). The parity worker refuses every parity
/// query as a dead letter, so a stopped model worker's queries are never answered with a
/// wrong RECONSTRUCTED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parity_worker_on_another_parity_model_is_refused_not_served() {
    for (test, parity_worker_model) in [("mismatch-code", "mnist-lenet-parity-concat-k2"), ("mismatch-weights", "fashion-mnist-lenet-parity-add-k2")] {
        let mut p = Pipeline::start(test, 2, 1, |s| {
            s.encoder_args.extend(["--parity-model".to_string(), "mnist-lenet-parity-add-k2".to_string()]);
            s.parity_worker_args.extend(["--model".to_string(), parity_worker_model.to_string()]);
        })
        .await;
        p.deployment.signal("model-worker-0", Signal::Stop).unwrap();
        let sent = p.send("m", 0..20, 20.0, Some(100)).await;
        let (results, _) = p.results_for(&sent, Duration::from_secs(60)).await;
        p.deployment.signal("model-worker-0", Signal::Cont).unwrap();
        assert_eq!(count(&results, ResultSource::Reconstructed), 0, "{test}: nothing is reconstructed from another parity model");
        assert!(count(&results, ResultSource::Unavailable) > 0, "{test}: the stopped worker's queries were answered UNAVAILABLE");
        let letters = p.dead_letters(1, Duration::from_secs(30)).await;
        let d = letters.values().next().expect("a dead letter from the parity worker");
        assert_eq!(d.service, "parity-worker");
        assert!(d.reason.contains("same parity model"), "{test}: {}", d.reason);
    }
}

/// Exactly once (`--delivery exactly-once` on every service): a stream salted with
/// hostile records runs through a SIGKILL and restart of a model worker, the parity worker,
/// the decoder and the encoder, and a 10 s broker stop. A `read_committed` client sees
/// every valid query answered exactly once, and every hostile record dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_every_query_gets_one_result_through_kills_and_a_broker_restart() {
    // Ports of its own: the broker-restart test above may run at the same time.
    let broker = tokio::task::block_in_place(|| Cluster::start(OWN_BROKER_PORT + 200, 1)).expect("starting a broker of this test's own");
    let mut p = Pipeline::start_on(&broker.bootstrap, "eos", 2, 1, |s| {
        s.service_env.push(("PARM_DELIVERY".into(), "exactly-once".into()));
        // Both kinds of worker: model worker 0 (killed below) writes outside transactions,
        // the default; model worker 1 and the parity worker (killed below) in them.
        s.per_model_worker_args.push((1, vec!["--worker-transactions".into()]));
        s.parity_worker_args.push("--worker-transactions".into());
        // Answers must come from the model or a reconstruction, not a passed deadline,
        // whatever a restart costs.
        let hard = "90000".to_string();
        s.encoder_args.extend(["--hard-deadline-ms".to_string(), hard.clone(), "--max-deadline-ms".to_string(), hard.clone()]);
        s.decoder_args.extend(["--max-deadline-ms".to_string(), hard]);
    })
    .await;
    let data = mnist();
    let mut stream = SaltedStream::default();
    stream.phase(&p, "warm").await;
    for service in ["model-worker-0", "parity-worker-0", "decoder-0", "encoder"] {
        stream.phase(&p, &format!("before-{service}")).await;
        p.deployment.kill(service).expect("SIGKILL");
        stream.phase(&p, &format!("during-{service}")).await;
        p.deployment.restart(service).expect("restart");
    }
    // 12 s down, past the 10 s session timeout: every consumer loses its partitions, so
    // the decoder reads its answers back a second time, with groups rebuilt from the replay
    // after its own restart still held (a restore bound taken from those once let replayed
    // queries be answered twice).
    tokio::task::block_in_place(|| broker.stop_all()).expect("stopping the broker");
    let mut pending = Vec::new();
    for i in 0..12 {
        let id = format!("outage-{i}");
        let (f, _) = p.client.enqueue(&id, &data.images[500 + i], None).await.expect("queued while the broker is down");
        pending.push(f);
        stream.sent.insert(id, 500 + i);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tokio::task::block_in_place(|| broker.start_all()).expect("starting the broker again");
    for f in pending {
        parm_common::kafka::delivered(f, "queries").await.expect("a query queued during the outage is delivered after it");
    }
    stream.phase(&p, "after").await;
    let SaltedStream { sent, hostile: hostile_sent, .. } = stream;

    let (results, duplicates) = p.results_for(&sent, Duration::from_secs(180)).await;
    // Nothing more comes: no query is answered twice.
    let extra = p.client.collect(&["never".to_string()].into(), Duration::from_secs(5)).await.unwrap();
    let repeated = extra.iter().filter(|r| sent.contains_key(&r.result.query_id)).count();
    eprintln!(
        "exactly once through kills and a broker restart: {} results for {} queries, {duplicates} + {repeated} duplicates, {}",
        results.len(),
        sent.len(),
        tally(&results)
    );
    assert_eq!(duplicates + repeated, 0, "exactly one result per query (logs in {})", p.deployment.spec.log_dir.display());
    for (id, idx) in &sent {
        let r = &results[id].result;
        if r.source == ResultSource::Model {
            assert_eq!(r.top1, Some(top1_of_f(&data.images[*idx])), "{id}");
        }
    }
    let letters = p.dead_letters(hostile_sent.len(), Duration::from_secs(60)).await;
    for h in &hostile_sent {
        let d = letters.get(&h.key).unwrap_or_else(|| panic!("no dead letter for {}; got {:?}", h.key, letters.keys()));
        assert!(d.reason.contains(h.reason), "{}: reason '{}' should mention '{}'", h.key, d.reason, h.reason);
    }
    tokio::task::block_in_place(|| p.deployment.check_alive()).expect("every service rode out the faults");
}

/// Valid queries with hostile records among them, sent in phases.
#[derive(Default)]
struct SaltedStream {
    sent: HashMap<String, usize>,
    hostile: Vec<Hostile>,
    n: usize,
}

impl SaltedStream {
    /// Sends 20 valid queries at 40/s as `{tag}-{i}`, with one hostile record (each kind
    /// in turn) among them.
    async fn phase(&mut self, p: &Pipeline, tag: &str) {
        let kinds = hostile::every_kind(tag);
        let h = kinds[self.hostile.len() % kinds.len()].clone();
        for j in 0..20 {
            if j == 10 {
                p.client.send_raw(&h.key, &h.payload).await.expect("sending a hostile record");
            }
            let (id, i) = (format!("{tag}-{}", self.n), self.n);
            self.n += 1;
            p.client.send(&id, &mnist().images[i], None).await.expect("sending a query");
            self.sent.insert(id, i);
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        self.hostile.push(h);
    }
}
