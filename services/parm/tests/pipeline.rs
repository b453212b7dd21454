//! End-to-end tests of the pipeline against a real Apache Kafka broker, each service a
//! `parm` process, each test on topics of its own.

mod support;

use parm::launch::Signal;
use parm_common::avro;
use parm_common::records::{DeadLetter, Query, ResultSource, WireTensor};
use std::time::Duration;
use support::{count, free_port, http_get, mnist, tally, top1_of_f, Pipeline};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_pipeline_answers_every_query_with_the_models_own_prediction() {
    let p = Pipeline::start("healthy", 2, 1, |s| s.encoder_args = vec!["--deadline-ms".into(), "5000".into()]).await;
    let sent = p.send("h", 0..60, 100.0, None).await;
    let (results, duplicates) = p.results_for(&sent, Duration::from_secs(60)).await;
    assert_eq!(duplicates, 0);
    assert_eq!(count(&results, ResultSource::Model), sent.len(), "every result is MODEL");
    for (id, idx) in &sent {
        let r = &results[id].result;
        assert_eq!(r.top1, Some(top1_of_f(&mnist().images[*idx])), "{id}: top-1 differs from running F directly");
        assert_eq!(r.output.len(), 10);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_query_at_low_load_is_answered() {
    let p = Pipeline::start("lone", 2, 1, |_| {}).await;
    let sent = p.send("lone", 7..8, 1.0, None).await;
    let (results, _) = p.results_for(&sent, Duration::from_secs(30)).await;
    let r = &results["lone-7"].result;
    assert_eq!(r.source, ResultSource::Model);
    assert_eq!(r.top1, Some(top1_of_f(&mnist().images[7])));
}

/// A stopped worker's members come back reconstructed, soon after their deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_model_worker_is_covered_by_reconstructions() {
    const DEADLINE_MS: i64 = 300;
    const BOUND_MS: i64 = 1500;
    let mut p = Pipeline::start("sigstop", 2, 1, |_| {}).await;
    p.deployment.signal("model-worker-0", Signal::Stop).unwrap();
    let sent = p.send("s", 0..40, 20.0, Some(DEADLINE_MS)).await;
    let (results, _) = p.results_for(&sent, Duration::from_secs(60)).await;
    p.deployment.signal("model-worker-0", Signal::Cont).unwrap();

    let recon: Vec<_> = results.values().filter(|r| r.result.source == ResultSource::Reconstructed).collect();
    assert_eq!(count(&results, ResultSource::Unavailable), 0);
    assert!(recon.len() >= 10, "expected the stopped worker's members to be reconstructed, got {} of {}", recon.len(), results.len());
    let mut agree = 0;
    let mut late_by = Vec::new();
    for r in &recon {
        let idx = sent[&r.result.query_id];
        agree += usize::from(r.result.top1 == Some(top1_of_f(&mnist().images[idx])));
        // The decoder's decision time, on the same clock as the deadline.
        let over = r.result.emitted_at_ms - r.result.deadline_at_ms;
        late_by.push(over);
        assert!(over <= BOUND_MS, "{} was answered {over} ms after its deadline", r.result.query_id);
    }
    late_by.sort_unstable();
    eprintln!("reconstructed {}; answered after the deadline: median {} ms, max {} ms", recon.len(), late_by[late_by.len() / 2], late_by[late_by.len() - 1]);
    assert!(agree as f64 >= 0.9 * recon.len() as f64, "reconstructions agree with F on {agree} of {}", recon.len());
}

/// The value of a counter summed over the series whose labels contain `labels`, from a
/// Prometheus text exposition.
fn counter(exposition: &str, name: &str, labels: &str) -> f64 {
    exposition
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>()
        + 0.0 // an empty sum is -0.0
}

/// With `--skip-answered`, a stalled model worker that resumes drops the queued members
/// that were reconstructed meanwhile instead of computing them (the paper's cancellation).
/// The hard deadline is far away, so nothing is skipped for having expired. The worker
/// learns what is answered from its own reader of the results topic, which needs a fetch
/// after the stall too: the stalled worker takes batches of one query and 100 ms per query
/// (as a slow worker would), so the reader catches up within its first few queries, and
/// those few may be computed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_worker_skips_the_members_already_reconstructed() {
    // Queries the resumed worker may compute before its results reader has caught up.
    const CAUGHT_UP_WITHIN: usize = 3;
    let port = free_port();
    let metrics = format!("127.0.0.1:{port}");
    let mut p = Pipeline::start("skip", 2, 1, |s| {
        s.encoder_args.extend(["--hard-deadline-ms".to_string(), "60000".to_string()]);
        s.model_worker_args.push("--skip-answered".into());
        s.per_model_worker_args.push((0, vec!["--metrics-addr".into(), metrics.clone(), "--delay-fixed-ms".into(), "100".into(), "--max-batch".into(), "1".into()]));
    })
    .await;
    p.deployment.signal("model-worker-0", Signal::Stop).unwrap();
    let sent = p.send("s", 0..30, 20.0, Some(300)).await;
    let (results, _) = p.results_for(&sent, Duration::from_secs(60)).await;
    let recon = count(&results, ResultSource::Reconstructed);
    assert!(recon >= 8, "expected the stopped worker's members to be reconstructed, got {recon} of {}", results.len());
    p.deployment.signal("model-worker-0", Signal::Cont).unwrap();

    // The resumed worker reads the results topic, then its backlog: every reconstructed
    // member in it is skipped. Poll its metrics until they say so (or give up).
    let until = std::time::Instant::now() + Duration::from_secs(30);
    let (mut answered, mut expired) = (0.0, 0.0);
    while std::time::Instant::now() < until {
        if let Ok((200, body)) = tokio::task::block_in_place(|| http_get(&format!("http://{metrics}/metrics"), &[])) {
            answered = counter(&body, "parm_worker_skipped_total", "reason=\"answered\"");
            expired = counter(&body, "parm_worker_skipped_total", "reason=\"expired\"");
            if answered >= (recon - CAUGHT_UP_WITHIN) as f64 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("reconstructed {recon}; the resumed worker skipped {answered} as answered, {expired} as expired");
    assert!(
        answered >= (recon - CAUGHT_UP_WITHIN) as f64,
        "the resumed worker skipped {answered} answered members, but {recon} were reconstructed"
    );
    assert_eq!(expired, 0.0, "nothing was past its hard deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_model_worker_loses_no_query_and_service_resumes_after_restart() {
    let mut p = Pipeline::start("sigkill", 2, 1, |_| {}).await;
    p.deployment.kill("model-worker-1").unwrap();
    let during = p.send("during", 0..30, 30.0, Some(200)).await;
    let (results, _) = p.results_for(&during, Duration::from_secs(60)).await;
    assert!(count(&results, ResultSource::Reconstructed) > 0, "the dead worker's members were reconstructed");
    p.deployment.restart("model-worker-1").unwrap();
    tokio::task::block_in_place(|| p.deployment.wait_until_ready(Duration::from_secs(90))).unwrap();
    let after = p.send("after", 30..60, 30.0, Some(2000)).await;
    let (results, _) = p.results_for(&after, Duration::from_secs(60)).await;
    let mut rows: Vec<_> = results.values().map(|r| (r.result.query_id.clone(), r.result.source)).collect();
    rows.sort_by_key(|(id, _)| id[6..].parse::<usize>().unwrap_or(0));
    // The restarted worker is a static member: it takes its partition back at once and
    // first replays the queries that came while it was dead (their answers are already
    // reconstructed), and its partition is marked lagging until one of its predictions
    // arrives on time, so its first members may be reconstructed while it catches up.
    assert_eq!(count(&results, ResultSource::Unavailable), 0);
    assert!(rows[10..].iter().all(|(_, s)| *s == ResultSource::Model), "normal service resumed: {rows:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_decoders_answer_every_query_exactly_once() {
    let p = Pipeline::start("twodec", 2, 1, |s| s.decoders = 2).await;
    let sent = p.send("d", 0..80, 80.0, None).await;
    let (results, duplicates) = p.results_for(&sent, Duration::from_secs(60)).await;
    assert_eq!(results.len(), sent.len());
    // Give a stray duplicate the time to show up before checking there is none.
    let extra = p.client.collect(&["never".to_string()].into(), Duration::from_secs(2)).await.unwrap();
    assert_eq!(duplicates + extra.len(), 0, "no duplicate results");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decoder_killed_mid_stream_leaves_no_query_without_a_result() {
    let mut p = Pipeline::start("deckill", 2, 1, |_| {}).await;
    let (first, all) = p.send_across_a_crash("decoder-0", 0..40, 40..80, 40.0).await;
    let (results, duplicates) = p.results_for(&all, Duration::from_secs(90)).await;
    eprintln!(
        "after a decoder crash: {} results, {duplicates} duplicates, {}",
        results.len(),
        tally(&results)
    );
    // The restarted decoder replays its backlog before deadlines act: the predictions
    // are there, so the answers are real ones.
    assert_eq!(count(&results, ResultSource::Unavailable), 0);
    assert!(duplicates <= first.len(), "duplicates only for queries in flight at the crash");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_goes_to_dead_letters_and_everything_else_is_answered() {
    let p = Pipeline::start("badinput", 2, 1, |_| {}).await;
    let q = |id: &str, t: WireTensor| avro::encode(&Query { id: id.into(), tensor: t, deadline_ms: None, sent_at_ms: 0 }).unwrap();
    let floats = |v: Vec<f32>, shape: Vec<i64>| WireTensor { shape, data: v.iter().flat_map(|f| f.to_le_bytes()).collect() };
    let bad: Vec<(&str, Vec<u8>, &str)> = vec![
        ("garbage", vec![0xde, 0xad, 0xbe, 0xef, 0x00], "undecodable"),
        ("wrong-schema", avro::encode(&DeadLetter { service: "x".into(), topic: "y".into(), partition: 0, offset: 0, key: None, query_id: None, reason: "z".into(), payload: vec![], at_ms: 0 }).unwrap(), "undecodable"),
        ("wrong-shape", q("wrong-shape", floats(vec![0.5; 27 * 28], vec![1, 27, 28])), "shape"),
        ("nan", q("nan", { let mut v = vec![0.0f32; 784]; v[3] = f32::NAN; floats(v, vec![1, 28, 28]) }), "finite"),
        ("inf", q("inf", { let mut v = vec![0.0f32; 784]; v[5] = f32::INFINITY; floats(v, vec![1, 28, 28]) }), "finite"),
        ("ragged", q("ragged", WireTensor { shape: vec![1, 28, 28], data: vec![0; 7] }), "bytes"),
    ];
    for (key, payload, _) in &bad {
        p.client.send_raw(key, payload).await.unwrap();
    }
    let sent = p.send("ok", 0..10, 50.0, None).await;
    let (results, _) = p.results_for(&sent, Duration::from_secs(60)).await;
    assert_eq!(results.len(), 10, "every good query is answered");

    let letters = p.dead_letters(bad.len(), Duration::from_secs(30)).await;
    for (key, payload, reason) in &bad {
        let d = letters.get(*key).unwrap_or_else(|| panic!("no dead letter for {key}; got {:?}", letters.keys()));
        assert!(d.reason.contains(reason), "{key}: reason '{}' should mention '{reason}'", d.reason);
        assert_eq!(&d.payload, payload, "{key}: the dead letter keeps the original bytes");
        assert_eq!(d.service, "encoder");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encoder_killed_mid_stream_leaves_no_query_without_a_result() {
    let mut p = Pipeline::start("enckill", 2, 1, |s| s.encoder_args = vec!["--linger-ms".into(), "20".into()]).await;
    let (_, all) = p.send_across_a_crash("encoder", 0..30, 30..60, 40.0).await;
    let (results, duplicates) = p.results_for(&all, Duration::from_secs(90)).await;
    eprintln!("after an encoder crash: {} results, {duplicates} duplicates", results.len());
    assert_eq!(count(&results, ResultSource::Unavailable), 0, "the replayed queries are served");
    for (id, idx) in &all {
        let r = &results[id].result;
        if r.source == ResultSource::Model {
            assert_eq!(r.top1, Some(top1_of_f(&mnist().images[*idx])), "{id}");
        }
    }
}

/// Bad records inside the pipeline (a broken member query, a broken prediction) are dead
/// letters of the worker and the decoder; the services go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_between_services_become_dead_letters_too() {
    let p = Pipeline::start("badinner", 2, 1, |_| {}).await;
    let t = p.kafka.topics();
    let producer = p.kafka.producer().unwrap();
    for (topic, key) in [(&t.model_queries, "bad-member"), (&t.predictions, "bad-prediction"), (&t.parity_predictions, "bad-parity")] {
        let f = parm_common::kafka::send(&producer, topic, Some(0), key, &[1, 2, 3], rdkafka::message::OwnedHeaders::new()).await.unwrap();
        parm_common::kafka::delivered(f, topic).await.unwrap();
    }
    let sent = p.send("ok", 0..10, 50.0, None).await;
    let (results, _) = p.results_for(&sent, Duration::from_secs(60)).await;
    assert_eq!(results.len(), 10);

    let by_key = p.dead_letters(3, Duration::from_secs(30)).await;
    let service_of = |k: &str| by_key.get(k).map(|d| (d.service.as_str(), d.reason.contains("undecodable")));
    assert_eq!(service_of("bad-member"), Some(("model-worker", true)), "{by_key:?}");
    assert_eq!(service_of("bad-prediction"), Some(("decoder", true)), "{by_key:?}");
    assert_eq!(service_of("bad-parity"), Some(("decoder", true)), "{by_key:?}");
}
