//! The worker loop: gather a micro-batch, run the model off the async threads, write one
//! prediction per query to its group's decoder partition.
//!
//! Over 400 lines on purpose: the session loop and the handlers it calls share the
//! session's state (consumer, producer, outbox, transaction), and splitting them would
//! pass that state around. The decisions are in `parm_core`, the Kafka plumbing and the
//! delivery modes in `parm_common`; what is left here is the worker's I/O.

use parm_core::answered::Answered;
use crate::config::{Role, WorkerArgs};
use crate::delay::DelayModel;
use crate::health::HealthReporter;
use crate::inference::{pass_through, run_guarded};
use crate::intake::{self, Admitted, Expect, Refusal};
use opentelemetry::{Context, KeyValue};
use parm_common::delivery::{self, Delivery, Transactions};
use parm_common::kafka::{self, store_offsets, ParmContext, RebalanceCounter, Topics};
use parm_common::metrics::{names, Tally};
use parm_common::model::{resolve, Model};
use parm_common::outbox::Outbox;
use parm_common::parity_code::ParityCode;
use parm_common::records::{ParityPrediction, Prediction, QueryResult};
use parm_common::shutdown::Shutdown;
use parm_common::telemetry::{self, Consumed};
use parm_common::quarantine::guard;
use parm_common::{avro, dead_letter, now_ms};
use parm_core::offsets::Origin;
use parm_core::Tensor;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::FutureProducer;
use anyhow::Context as _;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One query of a batch, decoded and checked, with where it came from and its span.
struct Item {
    q: Admitted,
    origin: Origin,
    cx: Context,
}

/// How long the broker may gather results for a worker's `--skip-answered` reader: it
/// learns of answers up to this much later, and skips a little less, for a fraction of
/// the fetches ([`kafka::tail_reader`]).
const ANSWERED_GATHER_MS: u32 = 20;

/// One worker session's state: its role and model, the records not yet acknowledged, the
/// injected delay, what is known answered (`--skip-answered`) and (exactly once) its
/// transaction.
struct Worker {
    role: Role,
    name: String,
    group: String,
    topics: Topics,
    input_topic: String,
    output_topic: String,
    /// The model (model role), or the parity models of the code, parity j's at j.
    models: Vec<Arc<Model>>,
    producer: FutureProducer,
    outbox: Outbox,
    delay: DelayModel,
    skip_expired: bool,
    max_clock_skew_ms: i64,
    /// `--pass-through`: copy inputs instead of running the model.
    pass_through: bool,
    /// With `--skip-answered`: a reader of the results topic and what it has seen.
    answered: Option<(StreamConsumer<ParmContext>, Answered)>,
    /// What every input record must agree with (model, code, output partitions).
    expect: Expect,
    /// Queries run and skipped (by reason).
    counts: Tally,
    /// Exactly-once: the open transaction.
    txn: Option<Transactions>,
}

/// Runs a worker of `role` until `shutdown` fires or a write fails (exactly-once: a failed
/// transaction starts a fresh session, see `parm_common::delivery`).
pub async fn run(args: WorkerArgs, role: Role, shutdown: Shutdown) -> anyhow::Result<()> {
    let paths = match role {
        Role::Model => vec![resolve(&args.model_name(role))],
        // One parity model, or the r of a code (checked to be one code).
        Role::Parity => ParityCode::load(&args.model_name(role)).context("--model")?.parities.into_iter().map(|p| p.path).collect(),
    };
    let models = tokio::task::spawn_blocking(move || paths.iter().map(|p| Model::load(p)).collect::<anyhow::Result<Vec<_>>>()).await??;
    let service = match role {
        Role::Model => "model-worker",
        Role::Parity => "parity-worker",
    };
    let args = idempotent_in_exactly_once(args);
    let delivery = args.common.delivery.delivery;
    delivery::supervise(service, delivery, shutdown, |shutdown, started| session(args.clone(), role, models.clone(), shutdown, started)).await
}

/// Exactly once without `--worker-transactions`: the worker runs at least once (outputs
/// acknowledged, then offsets committed; see `WorkerArgs::worker_transactions` for why no
/// duplicate reaches a client), still reading only committed queries, with the short
/// fetch wait of a reader of transactional outputs (a waiting fetch is not woken when a
/// transaction commits).
fn idempotent_in_exactly_once(mut args: WorkerArgs) -> WorkerArgs {
    if args.common.delivery.exactly_once() && !args.worker_transactions {
        args.common.delivery.delivery = Delivery::AtLeastOnce;
        args.common.kafka = args.common.kafka.with_consumer_default("fetch.wait.max.ms", &kafka::READ_COMMITTED_FETCH_WAIT_MS.to_string());
        tracing::info!("exactly-once deployment: this worker writes its predictions outside transactions (--worker-transactions to change)");
    }
    args
}

async fn session(args: WorkerArgs, role: Role, models: Vec<Arc<Model>>, mut shutdown: Shutdown, started: Arc<AtomicBool>) -> anyhow::Result<()> {
    let want = match role {
        Role::Model => "base",
        Role::Parity => "parity",
    };
    if let Some(model) = models.iter().find(|m| m.manifest.role != want) {
        anyhow::bail!("{} is a {} model, but a {} worker serves a {want} model; pass --model", model.manifest.name, model.manifest.role, role.as_str());
    }
    let topics = args.common.kafka.topics();
    let (input_topic, output_topic) = match role {
        Role::Model => (topics.model_queries.clone(), topics.predictions.clone()),
        Role::Parity => (topics.parity_queries.clone(), topics.parity_predictions.clone()),
    };
    let output_partitions = kafka::service_partition_count(&args.common.kafka, &output_topic).await?;
    let group = args.group_name(role);
    let delivery = args.common.delivery.clone();
    let (producer, txn) = delivery::service_producer(&args.common.kafka, &delivery, &group)?;
    let (mut consumer, rebalances) = args.common.kafka.service_consumer(&group, delivery.delivery)?;
    consumer.subscribe(&[&input_topic])?;
    let mut rejoin = kafka::Rejoin::new(&group, &[&input_topic]);
    let answered = if args.skip_answered { Some((kafka::tail_reader(&args.common.kafka, &topics.results, "answered", Some(ANSWERED_GATHER_MS)).await?, Answered::new(60_000))) } else { None };
    let health = if args.report_health {
        kafka::service_partition_count(&args.common.kafka, &topics.health)
            .await
            .with_context(|| format!("--report-health needs the topic {}; create it with parm topics create", topics.health))?;
        // Health reports are not outputs of any input: outside every transaction.
        let reports = if txn.is_some() { args.common.kafka.producer()? } else { producer.clone() };
        Some(HealthReporter::spawn(reports, topics.health.clone(), args.worker_name(role), role.as_str(), args.slow_after_ms))
    } else {
        None
    };
    let expect = Expect::for_models(role, &models, &output_topic, output_partitions)?;
    let mut w = Worker {
        role,
        name: args.worker_name(role),
        group,
        topics,
        input_topic,
        output_topic,
        models,
        producer,
        outbox: Outbox::new(),
        delay: DelayModel::new(args.delay.clone()),
        skip_expired: !args.keep_expired,
        max_clock_skew_ms: i64::try_from(args.max_clock_skew_ms).unwrap_or(i64::MAX),
        pass_through: args.pass_through,
        answered,
        expect,
        counts: Default::default(),
        txn,
    };
    let names: Vec<&str> = w.models.iter().map(|m| m.manifest.name.as_str()).collect();
    tracing::info!(role = role.as_str(), worker = %w.name, model = %names.join(","), delay = w.delay.is_active(), pass_through = w.pass_through, "worker started");
    let batching = Batching { max: args.max_batch.max(1), wait: Duration::from_millis(args.max_wait_ms) };
    started.store(true, Ordering::SeqCst);
    let mut generation = rebalances.get();
    loop {
        if rejoin.pending() {
            consumer = rejoin.rejoin(&args.common.kafka, consumer, w.service())?;
        }
        // A rebalance shows in the counter during a poll, with or without a message.
        if rebalances.moved(&mut generation) {
            w.on_reassigned(&consumer)?;
        }
        let commit_due = w.txn.as_ref().map(|t| t.due_at(&w.outbox));
        let first = tokio::select! {
            _ = shutdown.wait() => break,
            done = w.outbox.next_done() => { done?; store(&consumer, &w); continue; }
            _ = tokio::time::sleep_until(commit_due.unwrap_or_else(Instant::now).into()), if commit_due.is_some() => {
                w.commit(&consumer, &rebalances, generation).await?;
                continue;
            }
            msg = consumer.recv() => match rejoin.readable(msg, &consumer, w.service(), "reading queries")? {
                Some(m) => m,
                None => continue,
            },
        };
        let reassigned = rebalances.moved(&mut generation);
        if reassigned {
            w.on_reassigned(&consumer)?;
        }
        kafka::consumed(&consumer, &first);
        let batch = gather(first, &consumer, &mut rejoin, &mut w, &rebalances, &mut generation, batching).await?;
        if let Some(h) = &health {
            if reassigned || !h.owns(batch.iter().map(|m| m.partition())) {
                h.set_partitions(owned_partitions(&consumer));
            }
            h.begin(now_ms());
        }
        let worked = w.process(&batch).await?;
        if let Some(h) = &health {
            h.end(now_ms(), worked);
        }
        store(&consumer, &w);
        if w.txn.as_ref().is_some_and(|t| Instant::now() >= t.due_at(&w.outbox)) {
            w.commit(&consumer, &rebalances, generation).await?;
        }
    }
    if w.txn.is_some() {
        w.commit(&consumer, &rebalances, generation).await?;
    } else {
        w.outbox.drain().await?;
        store(&consumer, &w);
        let _ = consumer.commit_consumer_state(CommitMode::Sync);
    }
    tracing::info!(worker = %w.name, counts = ?w.counts, "worker stopped");
    Ok(())
}

/// How a micro-batch is closed: at `max` queries, or `wait` after its first.
#[derive(Debug, Clone, Copy)]
struct Batching {
    max: usize,
    wait: Duration,
}

/// A micro-batch: `first` and what else arrives within the batching wait, up to its size.
/// Borrows the session loop's state for one batch.
async fn gather<'c>(
    first: BorrowedMessage<'c>,
    consumer: &'c StreamConsumer<ParmContext>,
    rejoin: &mut kafka::Rejoin,
    w: &mut Worker,
    rebalances: &RebalanceCounter,
    generation: &mut u64,
    batching: Batching,
) -> anyhow::Result<Vec<BorrowedMessage<'c>>> {
    let mut batch = vec![first];
    let until = Instant::now() + batching.wait;
    while batch.len() < batching.max {
        tokio::select! {
            msg = consumer.recv() => match rejoin.readable(msg, consumer, w.service(), "reading queries")? {
                Some(m) => {
                    if w.txn.is_some() && rebalances.moved(generation) {
                        // Exactly once, the new assignment starts at the committed
                        // offsets: what was gathered before it comes again from there
                        // (or goes to the partition's new owner).
                        w.on_reassigned(consumer)?;
                        batch.clear();
                    }
                    kafka::consumed(consumer, &m);
                    batch.push(m);
                }
                None if rejoin.pending() => break, // fenced: rejoin before reading on
                None => {}
            },
            _ = tokio::time::sleep_until(until.into()) => break,
        }
    }
    Ok(batch)
}

/// The input partitions assigned to this worker now.
fn owned_partitions(consumer: &StreamConsumer<ParmContext>) -> Vec<i32> {
    consumer.assignment().map(|tpl| tpl.elements().iter().map(|e| e.partition()).collect()).unwrap_or_default()
}

/// Stores the offsets whose outputs are acknowledged (at least once; exactly once they go
/// with the transaction, see `Worker::commit`).
fn store(consumer: &StreamConsumer<ParmContext>, w: &Worker) {
    if w.txn.is_some() {
        return;
    }
    let offsets: Vec<_> = w.outbox.tracker.all_committable().into_iter().map(|(_, p, o)| (w.input_topic.clone(), p, o)).collect();
    store_offsets(consumer, &offsets);
}

impl Worker {
    /// After a rebalance. At least once: partitions given back resume where this worker
    /// left off, and the holds of the others go (their new owner replays them). Exactly
    /// once: every partition restarts at its committed offset, so what the open
    /// transaction holds goes.
    fn on_reassigned(&mut self, consumer: &StreamConsumer<ParmContext>) -> anyhow::Result<()> {
        let r = kafka::reassigned(consumer);
        match self.txn.as_mut() {
            Some(txn) => {
                txn.abort(&self.outbox)?;
                self.outbox = Outbox::new();
                consumer.context().positions().retain(&HashSet::new());
            }
            None => {
                for (_, partition) in r.dropped {
                    self.outbox.tracker.forget(0, partition);
                }
            }
        }
        Ok(())
    }

    /// Commits the open transaction with the input offsets its outputs came from (exactly
    /// once). A rebalance not yet handled must not commit.
    async fn commit(&mut self, consumer: &StreamConsumer<ParmContext>, rebalances: &RebalanceCounter, generation: u64) -> anyhow::Result<()> {
        let Some(txn) = self.txn.as_mut() else { return Ok(()) };
        txn.flush(&mut self.outbox).await?;
        if rebalances.get() != generation {
            return Ok(());
        }
        let offsets = self.outbox.tracker.all_committable().into_iter().map(|(_, p, o)| (self.input_topic.clone(), p, o, String::new())).collect();
        txn.commit(consumer, &self.outbox, offsets)
    }

    /// Reads every result already waiting on the results topic, without blocking.
    fn catch_up_answered(&mut self) {
        use futures::FutureExt;
        let Some((reader, answered)) = self.answered.as_mut() else { return };
        while let Some(Ok(msg)) = reader.recv().now_or_never() {
            if let Ok(r) = avro::decode::<QueryResult>(msg.payload().unwrap_or_default()) {
                answered.record(&r.query_id, &r.group_id, now_ms());
            }
        }
    }

    /// Whether nobody waits for this item any more.
    fn already_answered(&self, item: &Item) -> bool {
        let Some((_, answered)) = &self.answered else { return false };
        match self.role {
            Role::Model => answered.query(&item.q.key),
            Role::Parity => answered.group(&item.q.group_id, item.q.index.max(0) as u32),
        }
    }

    /// Why this item needs no work, if it does not: "answered" (its result is already out:
    /// reconstructed, answered by a faster copy, or UNAVAILABLE) or "expired" (past its
    /// hard deadline, so the decoder has answered or will answer it UNAVAILABLE).
    fn skip_reason(&self, item: &Item, now: i64) -> Option<&'static str> {
        if self.already_answered(item) {
            Some("answered")
        } else if self.skip_expired && item.q.hard_deadline_at.saturating_add(self.max_clock_skew_ms) < now {
            // Stamped on the encoder's clock: skipped only when past it on any clock
            // within the skew allowed, so a clock ahead never drops work still awaited.
            Some("expired")
        } else {
            None
        }
    }

    /// Runs a batch; returns whether the model ran (false when every query was skipped).
    async fn process(&mut self, batch: &[BorrowedMessage<'_>]) -> anyhow::Result<bool> {
        self.catch_up_answered();
        let items = self.admit(batch).await?;
        if items.is_empty() {
            return Ok(false);
        }
        let started = Instant::now();
        let (items, outputs) = self.infer(batch, items).await?;
        if items.is_empty() {
            return Ok(true);
        }
        let extra = self.delay.extra(now_ms() as f64);
        if !extra.is_zero() {
            tokio::time::sleep(extra).await;
        }
        let inference_us = started.elapsed().as_micros() as i64;
        let role = self.role.as_str();
        metrics::histogram!(names::WORKER_BATCH_SIZE, "role" => role).record(items.len() as f64);
        metrics::histogram!(names::WORKER_INFERENCE_SECONDS, "role" => role).record(inference_us as f64 / 1e6);
        metrics::counter!(names::WORKER_QUERIES, "role" => role).increment(items.len() as u64);
        self.counts.add("run", items.len() as u64);
        self.send_outputs(&items, outputs, inference_us).await?;
        Ok(true)
    }

    /// The batch's queries worth running: each message is decoded and checked; one that is
    /// not a valid query is a dead letter, one no longer worth running is skipped.
    async fn admit(&mut self, batch: &[BorrowedMessage<'_>]) -> anyhow::Result<Vec<Item>> {
        let now = now_ms() as i64;
        let mut items = Vec::with_capacity(batch.len());
        for msg in batch {
            let origin = Origin { topic: 0, partition: msg.partition(), offset: msg.offset() };
            self.outbox.tracker.hold(origin);
            match guard(|| self.decode(msg, origin)) {
                Ok(item) => match self.skip_reason(&item, now) {
                    Some(reason) => {
                        metrics::counter!(names::WORKER_SKIPPED, "role" => self.role.as_str(), "reason" => reason).increment(1);
                        self.counts.add(reason, 1);
                        self.outbox.tracker.release(origin);
                    }
                    None => items.push(item),
                },
                Err((id, reason)) => {
                    let letter = dead_letter::for_message(self.service(), msg, id, reason);
                    let f = dead_letter::send(&self.producer, &self.topics.dead_letters, &letter).await?;
                    self.outbox.push(vec![origin], vec![(f, self.topics.dead_letters.clone())]);
                }
            }
        }
        Ok(items)
    }

    /// Runs the model on `items` (off the async threads) and returns those it answered with
    /// their outputs. A query the model could not run, or whose output is not finite
    /// numbers, is a dead letter; the rest of its batch goes on.
    async fn infer(&mut self, batch: &[BorrowedMessage<'_>], mut items: Vec<Item>) -> anyhow::Result<(Vec<Item>, Vec<Vec<f32>>)> {
        // A parity worker of an r-parity code runs each parity's queries on its own model:
        // one sub-batch per parity, in parity order (stable, so arrival order within each).
        items.sort_by_key(|i| i.q.parity_index);
        let mut work: Vec<(Arc<Model>, Vec<Tensor>)> = Vec::new();
        for item in &items {
            let Some(model) = self.models.get(item.q.parity_index) else { continue };
            match work.last_mut() {
                Some((m, tensors)) if Arc::ptr_eq(m, model) => tensors.push(item.q.tensor.clone()),
                _ => work.push((model.clone(), vec![item.q.tensor.clone()])),
            }
        }
        // Intake admits only parity indexes this worker serves; keep the pairing exact anyway,
        // and never leave a dropped item's input held (it would stall the offset commits).
        let (kept, unserved): (Vec<Item>, Vec<Item>) = items.into_iter().partition(|i| i.q.parity_index < self.models.len());
        for item in unserved {
            self.outbox.tracker.release(item.origin);
        }
        let items = kept;
        let names: Vec<String> = work.iter().map(|(m, _)| m.manifest.name.clone()).collect();
        let links: Vec<_> = items.iter().filter_map(|i| telemetry::link_to(&i.cx)).collect();
        let infer_cx = telemetry::internal_span(
            "infer",
            vec![KeyValue::new("parm.batch_size", items.len() as i64), KeyValue::new("parm.model", names.join(","))],
            &Context::new(),
            links,
        );
        let outputs: Vec<Result<Vec<f32>, String>> = if self.pass_through {
            work.iter().flat_map(|(m, tensors)| pass_through(m.manifest.output_size, tensors)).collect()
        } else {
            tokio::task::spawn_blocking(move || work.iter().flat_map(|(m, tensors)| run_guarded(m, tensors)).collect()).await?
        };
        drop(infer_cx);
        let mut kept = Vec::with_capacity(items.len());
        let mut good = Vec::with_capacity(items.len());
        for (item, output) in items.into_iter().zip(outputs) {
            match output {
                Ok(out) => {
                    kept.push(item);
                    good.push(out);
                }
                Err(reason) => {
                    let Some(msg) = batch.iter().find(|m| m.partition() == item.origin.partition && m.offset() == item.origin.offset) else {
                        self.outbox.tracker.release(item.origin); // cannot happen: every item came from this batch
                        continue;
                    };
                    let letter = dead_letter::for_message(self.service(), msg, Some(item.q.key.clone()), reason);
                    let f = dead_letter::send(&self.producer, &self.topics.dead_letters, &letter).await?;
                    self.outbox.push(vec![item.origin], vec![(f, self.topics.dead_letters.clone())]);
                }
            }
        }
        Ok((kept, good))
    }

    /// Sends one prediction (or parity prediction) per answered item to the decoder
    /// partition its query names; the outbox holds the inputs until they are acknowledged.
    async fn send_outputs(&mut self, items: &[Item], outputs: Vec<Vec<f32>>, inference_us: i64) -> anyhow::Result<()> {
        let finished = now_ms() as i64;
        let mut sends = Vec::with_capacity(items.len());
        for (item, output) in items.iter().zip(outputs) {
            let payload = match self.role {
                Role::Model => avro::encode(&Prediction {
                    query_id: item.q.key.clone(),
                    group_id: item.q.group_id.clone(),
                    index: item.q.index,
                    model_partition: item.origin.partition,
                    sent_at_ms: item.q.sent_at_ms,
                    received_at_ms: item.q.received_at_ms,
                    deadline_at_ms: item.q.deadline_at_ms,
                    output,
                    worker: self.name.clone(),
                    batch_size: items.len() as i32,
                    inference_us,
                    finished_at_ms: finished,
                    hard_deadline_at_ms: item.q.hard_deadline_at,
                })?,
                Role::Parity => avro::encode(&ParityPrediction {
                    group_id: item.q.group_id.clone(),
                    members: item.q.index,
                    output,
                    worker: self.name.clone(),
                    batch_size: items.len() as i32,
                    inference_us,
                    finished_at_ms: finished,
                    hard_deadline_at_ms: item.q.hard_deadline_at,
                    parity_index: item.q.parity_index as i32,
                })?,
            };
            let cx = telemetry::send_span(self.service(), &self.output_topic, Some(item.q.decoder_partition), &item.q.key, &item.cx, vec![]);
            let f = kafka::send(&self.producer, &self.output_topic, Some(item.q.decoder_partition), &item.q.group_id, &payload, telemetry::inject(&cx)).await?;
            sends.push((f, self.output_topic.clone()));
        }
        self.outbox.push(items.iter().map(|i| i.origin).collect(), sends);
        Ok(())
    }

    fn service(&self) -> &'static str {
        match self.role {
            Role::Model => "model-worker",
            Role::Parity => "parity-worker",
        }
    }

    fn decode(&self, msg: &BorrowedMessage<'_>, origin: Origin) -> Result<Item, Refusal> {
        let key = msg.key().and_then(|k| std::str::from_utf8(k).ok());
        let parent = telemetry::extract(msg.headers());
        let consumed = Consumed { topic: msg.topic(), partition: msg.partition(), offset: msg.offset(), consumer_group: &self.group, key };
        let cx = telemetry::process_span(self.service(), &consumed, &parent, vec![]);
        let q = intake::admit(&self.expect, msg.payload().unwrap_or_default())?;
        Ok(Item { q, origin, cx })
    }
}
