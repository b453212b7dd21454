//! The decoder loop: feed the join, write its decisions, commit what is safe.

use crate::catch_up::CatchUp;
use crate::config::DecoderArgs;
use crate::intake::{self, QueryMeta, Refusal};
use crate::links::GroupLinks;
use opentelemetry::trace::TraceContextExt;
use opentelemetry::Context;
use parm_common::kafka::{self, store_offsets, ParmContext, Topics};
use parm_common::metrics::names;
use parm_common::outbox::Outbox;
use parm_common::records::{QueryResult, ResultSource};
use parm_common::shutdown::Shutdown;
use parm_common::telemetry::{self, Consumed};
use parm_common::quarantine::guard;
use parm_common::{avro, dead_letter, now_ms, trouble};
use parm_core::clock::ClockSkew;
use parm_core::join::Event;
use parm_core::offsets::Origin;
use parm_core::{top1, Join, Source};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::FutureProducer;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

const SERVICE: &str = "decoder";
/// How long a manifest's stamp counts for the clock-skew estimate.
const SKEW_WINDOW_MS: u64 = 60_000;
const GROUPS: u8 = 0;
const PREDICTIONS: u8 = 1;
const PARITY: u8 = 2;

/// `(first result batch not covered, committable (topic, partition, next offset)s)`: see
/// `Decoder::snapshots`.
type Snapshot = (u64, Vec<(u8, i32, i64)>);


struct Decoder {
    args: DecoderArgs,
    group: String,
    topics: Topics,
    producer: FutureProducer,
    join: Join<QueryMeta>,
    links: GroupLinks,
    outbox: Outbox,
    /// `(first batch not covered, committable offsets)`, oldest first: offsets become safe
    /// to store once every result batch sent before the snapshot is acknowledged.
    snapshots: VecDeque<Snapshot>,
    catch_up: Option<CatchUp>,
    late: u64,
    late_agreed: u64,
    /// How far this clock is from the encoder's, for its deadlines.
    skew: ClockSkew,
}

/// Runs the decoder until `shutdown` fires or a write fails.
pub async fn run(args: DecoderArgs, mut shutdown: Shutdown) -> anyhow::Result<()> {
    let topics = args.common.kafka.topics();
    let counts = [
        kafka::partition_count(&args.common.kafka, &topics.groups).await?,
        kafka::partition_count(&args.common.kafka, &topics.predictions).await?,
        kafka::partition_count(&args.common.kafka, &topics.parity_predictions).await?,
    ];
    if counts.iter().any(|c| *c != counts[0]) {
        anyhow::bail!(
            "{}, {} and {} have {:?} partitions; they must have the same count so that one decoder sees a whole group",
            topics.groups, topics.predictions, topics.parity_predictions, counts
        );
    }
    let (mut consumer, rebalances) = args.common.kafka.consumer(&args.group_name())?;
    consumer.subscribe(&[&topics.groups, &topics.predictions, &topics.parity_predictions])?;
    let mut rejoin = kafka::Rejoin::new(&args.group_name(), &[&topics.groups, &topics.predictions, &topics.parity_predictions]);
    let mut d = Decoder {
        group: args.group_name(),
        producer: args.common.kafka.producer()?,
        join: Join::new(args.join_config()),
        skew: ClockSkew::new(SKEW_WINDOW_MS, args.max_clock_skew_ms),
        args,
        topics,
        links: GroupLinks::default(),
        outbox: Outbox::new(),
        snapshots: VecDeque::new(),
        catch_up: None,
        late: 0,
        late_agreed: 0,
    };
    tracing::info!(policy = %d.args.policy, lag_awareness = !d.args.no_lag_awareness, "decoder started");
    let mut generation = rebalances.get();
    let mut last_store = Instant::now();
    loop {
        if rejoin.pending() {
            consumer = rejoin.rejoin(&d.args.common.kafka, consumer, SERVICE)?;
        }
        let timer = if d.catch_up.is_some() { None } else { d.join.next_timeout() };
        let wait = timer.map(|t| Duration::from_millis(t.saturating_sub(now_ms())));
        tokio::select! {
            _ = shutdown.wait() => break,
            done = d.outbox.next_done() => done?,
            _ = tokio::time::sleep(wait.unwrap_or(Duration::ZERO)), if wait.is_some() => {
                d.join.handle_timeout(now_ms());
            }
            msg = consumer.recv() => {
                let msg = match msg {
                    Ok(m) => m,
                    Err(e) if rejoin.noticed(&consumer, &e) => continue,
                    Err(e) => {
                        trouble::ride_out(e, SERVICE, "reading groups and predictions")?;
                        continue;
                    }
                };
                if rebalances.get() != generation {
                    generation = rebalances.get();
                    d.on_reassigned(&consumer);
                }
                kafka::consumed(&consumer, &msg);
                d.on_message(&msg).await?;
            }
        }
        if d.catch_up.as_ref().is_some_and(|c| c.done(Instant::now())) {
            tracing::info!("caught up with the backlog; deadlines act from now on");
            d.catch_up = None;
            d.join.handle_timeout(now_ms());
        }
        d.flush_events().await?;
        if last_store.elapsed() >= Duration::from_millis(20) {
            d.store(&consumer);
            // Gauges that scan the join's state: refreshed with the offsets, not per message.
            metrics::gauge!(names::DECODER_OPEN_GROUPS).set(d.join.open_groups() as f64);
            metrics::gauge!(names::DECODER_LAGGING_PARTITIONS).set(d.join.lagging_partitions().len() as f64);
            last_store = Instant::now();
        }
    }
    d.outbox.drain().await?;
    d.store(&consumer);
    let _ = consumer.commit_consumer_state(CommitMode::Sync);
    tracing::info!(open_groups = d.join.len(), "decoder stopped");
    Ok(())
}

impl Decoder {
    /// After a rebalance: the groups of partitions given back stay (they resume where this
    /// decoder left off, see `parm_common::rebalance`), so nothing already answered is
    /// answered again; the groups of partitions that went elsewhere are forgotten; and the
    /// partitions taken over from elsewhere are replayed from their committed offsets up
    /// to their current end before deadlines act.
    fn on_reassigned(&mut self, consumer: &StreamConsumer<ParmContext>) {
        let r = kafka::reassigned(consumer);
        let dropped: std::collections::BTreeSet<i32> = r.dropped.iter().map(|(_, p)| *p).collect();
        for p in dropped {
            self.join.forget_partition(p, &[GROUPS, PREDICTIONS, PARITY]);
        }
        if r.resumed.len() == r.assigned.len() {
            return; // everything resumes where it was: nothing to replay
        }
        let started = Instant::now();
        let targets: HashMap<(String, i32), i64> =
            tokio::task::block_in_place(|| replay_targets(consumer)).into_iter().filter(|(k, _)| !r.resumed.contains(k)).collect();
        if targets.is_empty() {
            return;
        }
        tracing::info!(partitions = targets.len(), took_ms = started.elapsed().as_millis() as u64, "replaying the backlog before deadlines act");
        self.catch_up = Some(CatchUp::new(targets, Instant::now() + Duration::from_millis(self.args.catch_up_ms)));
    }

    async fn on_message(&mut self, msg: &BorrowedMessage<'_>) -> anyhow::Result<()> {
        let topic = if msg.topic() == self.topics.groups {
            GROUPS
        } else if msg.topic() == self.topics.predictions {
            PREDICTIONS
        } else {
            PARITY
        };
        let origin = Origin { topic, partition: msg.partition(), offset: msg.offset() };
        if let Some(c) = self.catch_up.as_mut() {
            c.observe(msg.topic(), msg.partition(), msg.offset());
        }
        let now = now_ms();
        let key = msg.key().and_then(|k| std::str::from_utf8(k).ok());
        let parent = telemetry::extract(msg.headers());
        let consumed = Consumed { topic: msg.topic(), partition: msg.partition(), offset: msg.offset(), consumer_group: &self.group, key };
        let cx = telemetry::process_span(SERVICE, &consumed, &parent, vec![]);
        let payload = msg.payload().unwrap_or_default();
        let outcome = guard(|| match topic {
            GROUPS => self.on_manifest(payload, origin, now),
            PREDICTIONS => self.on_prediction(payload, origin, now, &cx),
            _ => self.on_parity(payload, origin, now, &cx),
        });
        if let Err((query_id, reason)) = outcome {
            self.join.observe(origin);
            let letter = dead_letter::for_message(SERVICE, msg, query_id, reason);
            let f = dead_letter::send(&self.producer, &self.topics.dead_letters, &letter).await?;
            self.outbox.push(vec![], vec![(f, self.topics.dead_letters.clone())]);
        }
        Ok(())
    }

    fn on_manifest(&mut self, payload: &[u8], origin: Origin, now: u64) -> Result<(), Refusal> {
        let spec = intake::manifest(payload, now, self.args.max_deadline_ms, &mut self.skew)?;
        self.join.on_manifest(spec, origin, now);
        Ok(())
    }

    fn on_prediction(&mut self, payload: &[u8], origin: Origin, now: u64, cx: &Context) -> Result<(), Refusal> {
        let (group_id, mut arrival) = intake::prediction(payload, now, self.args.max_deadline_ms, &self.skew)?;
        self.links.add(&group_id, arrival.index as i32, cx.span().span_context().clone(), arrival.hard_deadline_at.saturating_add(self.args.late_linger_ms));
        // Used when the prediction is answered before its manifest arrives: the result
        // then joins the query's trace through the prediction's own span.
        arrival.meta.traceparent = telemetry::traceparent(cx);
        self.join.on_prediction(&group_id, arrival, origin, now);
        Ok(())
    }

    fn on_parity(&mut self, payload: &[u8], origin: Origin, now: u64, cx: &Context) -> Result<(), Refusal> {
        let p = intake::parity(payload, now, self.args.max_deadline_ms, &self.skew)?;
        self.links.add(&p.group_id, -1, cx.span().span_context().clone(), p.hard_deadline_at.saturating_add(self.args.late_linger_ms));
        self.join.on_parity(&p.group_id, p.members, p.output, p.hard_deadline_at, origin, now);
        Ok(())
    }

    /// Writes every decision the join made and updates the metrics.
    async fn flush_events(&mut self) -> anyhow::Result<()> {
        let mut sends = Vec::new();
        while let Some(event) = self.join.poll_event() {
            match event {
                Event::Result(e) => {
                    let source = ResultSource::from(e.source);
                    let result = QueryResult {
                        query_id: e.query_id.clone(),
                        group_id: e.group_id.clone(),
                        source,
                        top1: top1(&e.output).map(|i| i as i32),
                        output: e.output,
                        sent_at_ms: e.meta.sent_at_ms,
                        received_at_ms: e.meta.received_at_ms,
                        emitted_at_ms: e.at as i64,
                        deadline_at_ms: e.meta.deadline_at_ms,
                    };
                    let label = e.source.as_str();
                    metrics::counter!(names::DECODER_RESULTS, "source" => label).increment(1);
                    let latency = (e.at as i64 - e.meta.received_at_ms).max(0) as f64 / 1000.0;
                    metrics::histogram!(names::DECODER_LATENCY_SECONDS, "source" => label).record(latency);
                    let parent = e.meta.traceparent.as_deref().map(telemetry::from_traceparent).unwrap_or_default();
                    let links = self.links.links_for(&e.group_id, e.index as i32, e.source == Source::Reconstructed);
                    let cx = telemetry::send_span(SERVICE, &self.topics.results, None, &e.query_id, &parent, links);
                    cx.span().set_attribute(opentelemetry::KeyValue::new("parm.source", label));
                    let f = kafka::send(&self.producer, &self.topics.results, None, &e.query_id, &avro::encode(&result)?, telemetry::inject(&cx)).await?;
                    sends.push((f, self.topics.results.clone()));
                }
                Event::Late { agreed, query_id, late_by_ms, .. } => {
                    metrics::counter!(names::DECODER_LATE).increment(1);
                    tracing::debug!(%query_id, late_by_ms, ?agreed, "late prediction");
                    if let Some(a) = agreed {
                        self.late += 1;
                        if a {
                            self.late_agreed += 1;
                            metrics::counter!(names::DECODER_LATE_AGREED).increment(1);
                        }
                        metrics::gauge!(names::DECODER_AGREEMENT).set(self.late_agreed as f64 / self.late as f64);
                    }
                }
                Event::Lagging { model_partition } => {
                    tracing::info!(model_partition, "model partition is lagging: its pending members are reconstructed at once");
                }
                Event::Expired { group_id, inputs } => {
                    tracing::debug!(%group_id, inputs, "predictions without a manifest expired");
                }
                Event::Evicted { group_id } => {
                    metrics::counter!(names::DECODER_EVICTED).increment(1);
                    tracing::debug!(%group_id, "the join is full (--max-groups): the group due first was settled early");
                }
            }
        }
        if !sends.is_empty() {
            self.outbox.push(vec![], sends);
        }
        self.links.expire(now_ms());
        Ok(())
    }

    /// Stores the newest offsets whose results are all acknowledged.
    fn store(&mut self, consumer: &StreamConsumer<ParmContext>) {
        self.snapshots.push_back((self.outbox.next_seq(), self.join.committable()));
        let acked = self.outbox.acked_before();
        let mut safe = None;
        while self.snapshots.front().is_some_and(|(seq, _)| *seq <= acked) {
            safe = self.snapshots.pop_front().map(|(_, s)| s);
        }
        let Some(offsets) = safe else { return };
        let names = [&self.topics.groups, &self.topics.predictions, &self.topics.parity_predictions];
        let offsets: Vec<_> = offsets.into_iter().map(|(t, p, o)| (names[t as usize].clone(), p, o)).collect();
        store_offsets(consumer, &offsets);
    }
}

/// The end offsets to replay to, per assigned partition that has anything left to read.
fn replay_targets(consumer: &StreamConsumer<ParmContext>) -> HashMap<(String, i32), i64> {
    let timeout = Duration::from_secs(2);
    let Ok(assignment) = consumer.assignment() else { return HashMap::new() };
    let committed = consumer.committed(timeout).ok();
    let mut targets = HashMap::new();
    for e in assignment.elements() {
        let Ok((_, high)) = consumer.fetch_watermarks(e.topic(), e.partition(), timeout) else { continue };
        let from = committed
            .as_ref()
            .and_then(|c| c.find_partition(e.topic(), e.partition()))
            .and_then(|p| p.offset().to_raw())
            .unwrap_or(0);
        if high > from.max(0) {
            targets.insert((e.topic().to_string(), e.partition()), high);
        }
    }
    targets
}
