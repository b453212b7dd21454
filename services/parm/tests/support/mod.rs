//! Shared setup of the integration tests: the real broker (started once with
//! `scripts/kafka-local`, or `PARM_TEST_BROKERS`), a deployment of `parm` processes on
//! topics of its own, and a client.

#![allow(dead_code)]

use parm::client::{Client, Received};
use parm::launch::{Deployment, DeploymentSpec};
use parm::mnist::Mnist;
use parm_common::kafka::{create_topics, KafkaArgs, TopicLayout};
use parm_common::model::{resolve, Model};
use parm_common::now_ms;
use parm_common::records::{DeadLetter, ResultSource};
use parm_core::Tensor;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The broker every test uses.
pub fn brokers() -> String {
    static BROKERS: OnceLock<String> = OnceLock::new();
    BROKERS.get_or_init(|| parm::broker::for_tests().expect("starting the local Kafka broker with scripts/kafka-local")).clone()
}

pub fn mnist() -> &'static Mnist {
    static DATA: OnceLock<Mnist> = OnceLock::new();
    DATA.get_or_init(|| Mnist::load_test_subset().expect("MNIST test subset in models/data"))
}

/// F (the services' default base model), run directly with tract, to compare the
/// pipeline's answers with.
pub fn base_model() -> Arc<Model> {
    static MODEL: OnceLock<Arc<Model>> = OnceLock::new();
    MODEL.get_or_init(|| Model::load(&resolve("mnist-lenet")).expect("models/mnist-lenet.json")).clone()
}

pub fn top1_of_f(t: &Tensor) -> i32 {
    let out = base_model().infer(&[t]).expect("F runs");
    parm_core::top1(&out[0]).expect("non-empty output") as i32
}

/// Topic names and consumer groups unique to one test.
pub fn kafka_for(test: &str) -> KafkaArgs {
    kafka_on(&brokers(), test)
}

/// Like [`kafka_for`], on another broker.
pub fn kafka_on(brokers: &str, test: &str) -> KafkaArgs {
    KafkaArgs { brokers: brokers.to_string(), topic_prefix: format!("t-{test}-{}", now_ms()), kafka_set: vec![], instance_id: None, consumer_defaults: vec![] }
}

/// A running deployment and a client connected to it.
pub struct Pipeline {
    pub kafka: KafkaArgs,
    pub deployment: Deployment,
    pub client: Client,
}

impl Pipeline {
    /// Creates the topics, starts the services as processes and waits until every consumer
    /// group is stable. `tweak` adjusts the spec (flags, stragglers) before the start.
    pub async fn start(test: &str, model_workers: usize, parity_workers: usize, tweak: impl FnOnce(&mut DeploymentSpec)) -> Self {
        Self::start_on(&brokers(), test, model_workers, parity_workers, tweak).await
    }

    /// [`Pipeline::start`] on another broker.
    pub async fn start_on(brokers: &str, test: &str, model_workers: usize, parity_workers: usize, tweak: impl FnOnce(&mut DeploymentSpec)) -> Self {
        let kafka = kafka_on(brokers, test);
        let layout = TopicLayout {
            query_partitions: 1,
            model_partitions: model_workers as i32,
            parity_partitions: parity_workers as i32,
            decoder_partitions: 2,
        };
        create_topics(&kafka, &layout).await.expect("creating topics");
        let mut spec = DeploymentSpec::new(&kafka.brokers, &kafka.topic_prefix, model_workers, parity_workers);
        tweak(&mut spec);
        let mut deployment = Deployment::start(std::path::Path::new(env!("CARGO_BIN_EXE_parm")), spec).expect("starting services");
        tokio::task::block_in_place(|| deployment.wait_until_ready(Duration::from_secs(90))).expect("services ready");
        let client = Client::connect(&kafka).expect("client");
        Self { kafka, deployment, client }
    }

    /// Sends MNIST test images `range` as queries with ids `{tag}-{i}`, at most `rate` per
    /// second; returns id → image index.
    pub async fn send(&self, tag: &str, range: std::ops::Range<usize>, rate: f64, deadline_ms: Option<i64>) -> HashMap<String, usize> {
        let data = mnist();
        let mut sent = HashMap::new();
        for i in range {
            let id = format!("{tag}-{i}");
            self.client.send(&id, &data.images[i % data.len()], deadline_ms).await.expect("sending a query");
            sent.insert(id, i % data.len());
            tokio::time::sleep(Duration::from_secs_f64(1.0 / rate)).await;
        }
        sent
    }

    /// Sends queries `before` ("a-…"), SIGKILLs `service`, sends `during` ("b-…") while it
    /// is down, and restarts it. Returns the queries sent before the crash, and all of them.
    pub async fn send_across_a_crash(
        &mut self,
        service: &str,
        before: std::ops::Range<usize>,
        during: std::ops::Range<usize>,
        rate: f64,
    ) -> (HashMap<String, usize>, HashMap<String, usize>) {
        let first = self.send("a", before, rate, None).await;
        self.deployment.kill(service).unwrap();
        let second = self.send("b", during, rate, None).await;
        self.deployment.restart(service).unwrap();
        let mut all = first.clone();
        all.extend(second);
        (first, all)
    }

    /// Collects results until every id has one (or the timeout), by id; fails on a missing one.
    pub async fn results_for(&self, ids: &HashMap<String, usize>, timeout: Duration) -> (HashMap<String, Received>, usize) {
        let expected: HashSet<String> = ids.keys().cloned().collect();
        let received = self.client.collect(&expected, timeout).await.expect("reading results");
        let mut by_id = HashMap::new();
        let mut duplicates = 0;
        for r in received {
            if !expected.contains(&r.result.query_id) {
                continue;
            }
            if by_id.insert(r.result.query_id.clone(), r).is_some() {
                duplicates += 1;
            }
        }
        let missing: Vec<_> = expected.iter().filter(|id| !by_id.contains_key(*id)).collect();
        assert!(missing.is_empty(), "{} queries got no result, e.g. {:?} (logs in {})", missing.len(), missing.iter().take(5).collect::<Vec<_>>(), self.deployment.spec.log_dir.display());
        (by_id, duplicates)
    }

    /// Reads dead letters until `n` distinct keys are in (or the timeout), by record key.
    pub async fn dead_letters(&self, n: usize, timeout: Duration) -> HashMap<String, DeadLetter> {
        parm::client::dead_letters(&self.kafka, n, timeout).await.expect("reading the dead-letter topic")
    }
}

/// How many of `results` came from `source`.
pub fn count(results: &HashMap<String, Received>, source: ResultSource) -> usize {
    results.values().filter(|r| r.result.source == source).count()
}

/// `N MODEL, N RECONSTRUCTED, N UNAVAILABLE`, for a test's summary line.
pub fn tally(results: &HashMap<String, Received>) -> String {
    let n = |s| count(results, s);
    format!("{} MODEL, {} RECONSTRUCTED, {} UNAVAILABLE", n(ResultSource::Model), n(ResultSource::Reconstructed), n(ResultSource::Unavailable))
}

/// A port free on loopback right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// GET `url` with the query parameters `query` (encoded by the client); returns the
/// status code and body.
///
/// The blocking client runs a runtime of its own, which must not be dropped on a Tokio
/// thread: it runs on a thread of its own, so a test can call this from anywhere.
pub fn http_get(url: &str, query: &[(&str, &str)]) -> anyhow::Result<(u16, String)> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> anyhow::Result<(u16, String)> {
                let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build()?;
                let response = client.get(url).query(query).send()?;
                let status = response.status().as_u16();
                Ok((status, response.text()?))
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the HTTP client thread panicked"))?
    })
}
