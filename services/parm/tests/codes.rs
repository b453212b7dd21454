//! End-to-end tests of codes beyond the default one, against a real Apache Kafka broker:
//! r = 2 parities per group (two stragglers in one group) and k = 8 members per group.

mod support;

use parm::launch::Signal;
use parm_common::records::ResultSource;
use std::collections::HashMap;
use std::time::Duration;
use parm::client::Received;
use support::{count, mnist, tally, top1_of_f, Pipeline};

/// How many of `results` agree with F's own top-1 on their image (`sent`: id → image).
fn agreeing<'a>(results: impl IntoIterator<Item = &'a Received>, sent: &HashMap<String, usize>) -> usize {
    results.into_iter().filter(|r| r.result.top1 == Some(top1_of_f(&mnist().images[sent[&r.result.query_id]]))).count()
}

/// Two parities per group (k = 2, r = 2, the addition code's parity and the Vandermonde
/// one): with both model workers stopped at once, every member of every group is missing,
/// and each is answered RECONSTRUCTED from the two parity outputs soon after its
/// deadline. The parity workers serve both parity models.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stopped_model_workers_are_covered_by_two_parities() {
    const CODE: &str = "mnist-lenet-parity-add-k2,mnist-lenet-parity-add-k2-r2-p1";
    const DEADLINE_MS: i64 = 300;
    const BOUND_MS: i64 = 1500;
    let mut p = Pipeline::start("two-stragglers", 2, 2, |s| {
        // A linger well above the gap between queries, so that groups are full: both members missing.
        s.encoder_args = ["--parity-model", CODE, "--linger-ms", "500"].map(String::from).to_vec();
        s.parity_worker_args = ["--model", CODE].map(String::from).to_vec();
    })
    .await;
    p.deployment.signal("model-worker-0", Signal::Stop).unwrap();
    p.deployment.signal("model-worker-1", Signal::Stop).unwrap();
    let sent = p.send("two", 0..40, 20.0, Some(DEADLINE_MS)).await;
    let (results, duplicates) = p.results_for(&sent, Duration::from_secs(60)).await;
    p.deployment.signal("model-worker-0", Signal::Cont).unwrap();
    p.deployment.signal("model-worker-1", Signal::Cont).unwrap();

    eprintln!("both model workers stopped, r = 2: {}", tally(&results));
    assert_eq!(duplicates, 0);
    assert_eq!(count(&results, ResultSource::Unavailable), 0, "no query waited for its hard deadline");
    assert_eq!(count(&results, ResultSource::Reconstructed), sent.len(), "every query was reconstructed");
    let mut per_group: HashMap<&str, usize> = HashMap::new();
    for r in results.values() {
        *per_group.entry(r.result.group_id.as_str()).or_default() += 1;
    }
    let full = per_group.values().filter(|n| **n == 2).count();
    assert!(full * 2 >= sent.len() * 3 / 4, "most groups were full (both members missing at once): {full} of {}", per_group.len());
    for r in results.values() {
        let over = r.result.emitted_at_ms - r.result.deadline_at_ms;
        assert!(over <= BOUND_MS, "{} was answered {over} ms after its deadline", r.result.query_id);
    }
    // Both members missing is decoded at 97.8% top-1 on the whole test set (benchmarks/README.md).
    let agree = agreeing(results.values(), &sent);
    assert!(agree * 10 >= sent.len() * 8, "reconstructions agree with F on {agree} of {}", sent.len());
}

/// k = 8 with the concatenation parity model (eight 7 × 14 tiles): one model worker of
/// eight stopped, so every group misses exactly one member, and each is answered
/// RECONSTRUCTED from the parity and the seven others, none UNAVAILABLE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_k_8_a_stopped_model_worker_is_covered_by_reconstructions() {
    const CODE: &str = "mnist-lenet-parity-concat-k8";
    const DEADLINE_MS: i64 = 400;
    let mut p = Pipeline::start("k8", 8, 1, |s| {
        // Eight queries 12.5 ms apart fill a group well within the linger.
        s.encoder_args = ["--parity-model", CODE, "--linger-ms", "1000"].map(String::from).to_vec();
        s.parity_worker_args = ["--model", CODE].map(String::from).to_vec();
    })
    .await;
    p.deployment.signal("model-worker-3", Signal::Stop).unwrap();
    let sent = p.send("k8", 0..160, 80.0, Some(DEADLINE_MS)).await;
    let (results, duplicates) = p.results_for(&sent, Duration::from_secs(60)).await;
    p.deployment.signal("model-worker-3", Signal::Cont).unwrap();

    eprintln!("k = 8, one model worker of eight stopped: {}", tally(&results));
    assert_eq!(duplicates, 0);
    assert_eq!(count(&results, ResultSource::Unavailable), 0, "no query waited for its hard deadline");
    let recon: Vec<&Received> = results.values().filter(|r| r.result.source == ResultSource::Reconstructed).collect();
    assert_eq!(recon.len(), sent.len() / 8, "one member of each group of eight was reconstructed");
    let real: Vec<&Received> = results.values().filter(|r| r.result.source == ResultSource::Model).collect();
    assert_eq!(agreeing(real.iter().copied(), &sent), real.len(), "real answers are F's own");
    // Concatenation at k = 8 decodes at 87.6% top-1 on the whole test set (benchmarks/README.md).
    let agree = agreeing(recon.iter().copied(), &sent);
    eprintln!("reconstructions agree with F on {agree} of {}", recon.len());
    assert!(agree * 10 >= recon.len() * 7, "reconstructions agree with F on {agree} of {}", recon.len());
}
