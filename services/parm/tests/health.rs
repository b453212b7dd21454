//! Health routing against a real Kafka broker: workers started with `--report-health` say
//! when they are slow, and an encoder started with `--route-by-health` gives a query bound
//! for a slow model worker a coding group of its own, and sends the recent parity queries of
//! a parity worker that turned slow to another one.

mod support;

use parm_common::avro::{self, AvroRecord};
use parm_common::records::{GroupManifest, ParityQuery, WorkerHealth};
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use support::Pipeline;

/// Reads `topic` from the start (a consumer group of its own) until `done` says so or the
/// timeout; returns each record with its partition.
async fn read_until<T: AvroRecord>(p: &Pipeline, topic: &str, timeout: Duration, mut done: impl FnMut(&[(i32, T)]) -> bool) -> Vec<(i32, T)> {
    let (consumer, _) = p.kafka.consumer(&format!("{}-reader-{topic}", p.kafka.topic_prefix)).unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut records = Vec::new();
    let until = Instant::now() + timeout;
    while !done(&records) && Instant::now() < until {
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await {
            records.push((m.partition(), avro::decode::<T>(m.payload().unwrap_or_default()).expect("a record of its schema")));
        }
    }
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_workers_are_routed_around() {
    // Model worker 0 and parity worker 0 take 250 / 300 ms per query (batches of one), the
    // others a few ms; a batch over 60 ms makes a worker slow. Without --skip-answered the
    // slow model worker stays busy (a third of 20 queries/s come to it), so it stays slow.
    // The linger (200 ms) is long enough for every group to fill but for the routing.
    let slow = |ms: &str| vec!["--delay-fixed-ms".to_string(), ms.to_string(), "--max-batch".into(), "1".into()];
    let p = Pipeline::start("health", 3, 2, |s| {
        s.encoder_args = ["--route-by-health", "--linger-ms", "200"].map(String::from).to_vec();
        for args in [&mut s.model_worker_args, &mut s.parity_worker_args] {
            args.extend(["--report-health", "--slow-after-ms", "60"].map(String::from));
        }
        s.per_model_worker_args.push((0, slow("250")));
        s.per_parity_worker_args.push((0, slow("300")));
    })
    .await;
    let sent = p.send("h", 0..60, 20.0, None).await;
    let (results, _) = p.results_for(&sent, Duration::from_secs(60)).await;
    assert_eq!(results.len(), sent.len(), "every query is answered");

    // The slow workers said so, each naming the partition it owns.
    let t = p.kafka.topics();
    let slow_partition = |reports: &[(i32, WorkerHealth)], role: &str| {
        reports.iter().find(|(_, h)| h.slow && h.role == role && h.partitions.len() == 1).map(|(_, h)| h.partitions[0])
    };
    let reports = read_until::<WorkerHealth>(&p, &t.health, Duration::from_secs(30), |r| {
        slow_partition(r, "model").is_some() && slow_partition(r, "parity").is_some()
    })
    .await;
    let (slow_model, slow_parity) = (slow_partition(&reports, "model").unwrap_or_else(|| panic!("no slow model worker reported: {reports:?}")), slow_partition(&reports, "parity").unwrap_or_else(|| panic!("no slow parity worker reported: {reports:?}")));
    assert!(
        reports.iter().all(|(_, h)| !h.slow || (h.role == "model" && h.partitions == [slow_model]) || (h.role == "parity" && h.partitions == [slow_parity])),
        "only the delayed workers are slow: {reports:?}"
    );

    // Queries bound for the slow model worker are grouped alone once it is known to be slow
    // (all but the few sent before its first report), while the others still pair up.
    let ids: HashSet<String> = sent.keys().cloned().collect();
    let manifests = read_until::<GroupManifest>(&p, &t.groups, Duration::from_secs(30), |m| {
        m.iter().flat_map(|(_, g)| g.members.iter().map(|x| x.query_id.clone())).collect::<HashSet<_>>().is_superset(&ids)
    })
    .await;
    let on_slow: Vec<&GroupManifest> = manifests.iter().map(|(_, g)| g).filter(|g| g.members.iter().any(|m| m.model_partition == slow_model)).collect();
    let alone = on_slow.iter().filter(|g| g.members.len() == 1).count();
    let pairs = manifests.iter().filter(|(_, g)| g.members.len() == 2).count();
    eprintln!("{} groups with a member on the slow model worker, {alone} of them alone; {pairs} pairs in all", on_slow.len());
    assert!(on_slow.len() >= 15, "a third of 60 queries go to each model partition: {}", on_slow.len());
    assert!(alone + 2 >= on_slow.len(), "only {alone} of {} groups on the slow worker are alone", on_slow.len());
    assert!(pairs >= 5, "queries bound for healthy workers still share groups: {pairs} pairs");

    // When the parity worker turned slow, some parity queries it had been given went again
    // to the other parity partition: a group id on both.
    let groups: HashSet<String> = manifests.iter().map(|(_, g)| g.group_id.clone()).collect();
    let resent = |q: &[(i32, ParityQuery)]| {
        let mut partitions: HashMap<&str, HashSet<i32>> = HashMap::new();
        for (p, x) in q {
            partitions.entry(&x.group_id).or_default().insert(*p);
        }
        (partitions.len(), partitions.values().filter(|s| s.len() > 1).count())
    };
    let parity = read_until::<ParityQuery>(&p, &t.parity_queries, Duration::from_secs(30), |q| {
        let (seen, twice) = resent(q);
        seen >= groups.len() && twice > 0
    })
    .await;
    let (seen, twice) = resent(&parity);
    eprintln!("parity queries of {seen} groups, {twice} sent to both parity partitions; slow parity partition {slow_parity}");
    assert_eq!(seen, groups.len(), "a parity query for every group");
    assert!(twice > 0, "the slow parity worker's recent parity queries were sent again");
}
