//! The decoder loop: feed the join, write its decisions, commit what is safe.
//!
//! Over 400 lines on purpose: the session loop and the handlers it calls share the
//! session's state (consumer, producer, outbox, transaction), and splitting them would
//! pass that state around. The decisions are in `parm_core`, the Kafka plumbing and the
//! delivery modes in `parm_common`; what is left here is the decoder's I/O.

use crate::catch_up::CatchUp;
use crate::config::DecoderArgs;
use crate::intake::{self, QueryMeta, Refusal};
use crate::restore::restore;
use opentelemetry::trace::{Link, SpanContext, TraceContextExt};
use opentelemetry::Context;
use parm_common::delivery::{self, metadata_field, Transactions};
use parm_common::kafka::{self, store_offsets_with_metadata, ParmContext, Topics};
use parm_common::metrics::names;
use parm_common::outbox::Outbox;
use parm_common::records::{QueryResult, ResultSource};
use parm_common::shutdown::Shutdown;
use parm_common::telemetry::{self, Consumed};
use parm_common::quarantine::guard;
use parm_common::{avro, dead_letter, now_ms};
use parm_core::answers::Answers;
use parm_core::clock::ClockSkew;
use parm_core::join::Event;
use parm_core::links::GroupLinks;
use parm_core::offsets::Origin;
use parm_core::{top1, Join, Source};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::FutureProducer;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SERVICE: &str = "decoder";
/// How long a manifest's stamp counts for the clock-skew estimate.
const SKEW_WINDOW_MS: u64 = 60_000;
const GROUPS: u8 = 0;
const PREDICTIONS: u8 = 1;
const PARITY: u8 = 2;
/// The commit metadata field that says from when to read back answers (see `restore`).
const RESTORE_FROM: &str = "restore_from";

/// The `restore_from` bound (see `Decoder::restore_from_now`): the oldest group held
/// (`oldest`, else `now`) less `margin`, and no later than `floor`'s bound while a group
/// from its replay may be held (the replay has not ended, or the oldest group is no newer
/// than its end).
fn restore_bound(oldest: Option<u64>, now: u64, margin: u64, floor: Option<(i64, Option<u64>)>) -> i64 {
    let at = i64::try_from(oldest.unwrap_or(now).min(now).saturating_sub(margin)).unwrap_or(i64::MAX);
    match floor {
        Some((floor, None)) => at.min(floor),
        Some((floor, Some(end))) if oldest.is_some_and(|o| o <= end) => at.min(floor),
        _ => at,
    }
}

/// `(first result batch not covered, committable (topic, partition, next offset)s)`: see
/// `Decoder::snapshots`.
type Snapshot = (u64, Vec<(u8, i32, i64)>);


/// One decoder session's state: the join of every open group, the answers given, the
/// results not yet acknowledged and the offsets they hold back, and (exactly once) its
/// transaction.
struct Decoder {
    args: DecoderArgs,
    group: String,
    topics: Topics,
    producer: FutureProducer,
    join: Join<QueryMeta>,
    links: GroupLinks<SpanContext>,
    outbox: Outbox,
    /// `(first batch not covered, committable offsets)`, oldest first: offsets become safe
    /// to store once every result batch sent before the snapshot is acknowledged.
    snapshots: VecDeque<Snapshot>,
    catch_up: Option<CatchUp>,
    late: u64,
    late_agreed: u64,
    /// How far this clock is from the encoder's, for its deadlines.
    skew: ClockSkew,
    /// Every answer given lately (restored from the results topic on assignment): a
    /// replayed query is not answered twice.
    answers: Answers,
    /// Answers not written because they were given already.
    suppressed: u64,
    /// The `restore_from` read back at the last assignment, and when the replay that
    /// followed it ended (local ms; `None` while it runs). See [`Decoder::restore_from_now`].
    replay_floor: Option<(i64, Option<u64>)>,
    /// Exactly-once: the open transaction.
    txn: Option<Transactions>,
}

/// Runs the decoder until `shutdown` fires or a write fails (exactly-once: a failed
/// transaction starts a fresh session, see `parm_common::delivery`).
pub async fn run(args: DecoderArgs, shutdown: Shutdown) -> anyhow::Result<()> {
    let delivery = args.common.delivery.delivery;
    delivery::supervise(SERVICE, delivery, shutdown, |shutdown, started| session(args.clone(), shutdown, started)).await
}

async fn session(args: DecoderArgs, mut shutdown: Shutdown, started: Arc<AtomicBool>) -> anyhow::Result<()> {
    let topics = args.common.kafka.topics();
    let counts = [
        kafka::service_partition_count(&args.common.kafka, &topics.groups).await?,
        kafka::service_partition_count(&args.common.kafka, &topics.predictions).await?,
        kafka::service_partition_count(&args.common.kafka, &topics.parity_predictions).await?,
    ];
    if counts.iter().any(|c| *c != counts[0]) {
        anyhow::bail!(
            "{}, {} and {} have {:?} partitions; they must have the same count so that one decoder sees a whole group",
            topics.groups, topics.predictions, topics.parity_predictions, counts
        );
    }
    let delivery = args.common.delivery.clone();
    let (producer, txn) = delivery::service_producer(&args.common.kafka, &delivery, &args.group_name())?;
    let (mut consumer, rebalances) = args.common.kafka.service_consumer(&args.group_name(), delivery.delivery)?;
    consumer.subscribe(&[&topics.groups, &topics.predictions, &topics.parity_predictions])?;
    let mut rejoin = kafka::Rejoin::new(&args.group_name(), &[&topics.groups, &topics.predictions, &topics.parity_predictions]);
    let mut d = Decoder {
        group: args.group_name(),
        producer,
        join: Join::new(args.join_config()),
        skew: ClockSkew::new(SKEW_WINDOW_MS, args.max_clock_skew_ms),
        answers: Answers::new(args.answers_keep_ms()),
        suppressed: 0,
        replay_floor: None,
        txn,
        args,
        topics,
        links: GroupLinks::default(),
        outbox: Outbox::new(),
        snapshots: VecDeque::new(),
        catch_up: None,
        late: 0,
        late_agreed: 0,
    };
    tracing::info!(policy = %d.args.policy, lag_awareness = !d.args.no_lag_awareness, delivery = %delivery.delivery, "decoder started");
    started.store(true, Ordering::SeqCst);
    let mut generation = rebalances.get();
    let mut last_store = Instant::now();
    loop {
        if rejoin.pending() {
            consumer = rejoin.rejoin(&d.args.common.kafka, consumer, SERVICE)?;
        }
        // A rebalance shows in the counter during a poll, with or without a message.
        if rebalances.moved(&mut generation) {
            d.on_reassigned(&consumer).await?;
        }
        let timer = if d.catch_up.is_some() { None } else { d.join.next_timeout() };
        let wait = timer.map(|t| Duration::from_millis(t.saturating_sub(now_ms())));
        let commit_due = d.txn.as_ref().map(|t| t.due_at(&d.outbox));
        tokio::select! {
            _ = shutdown.wait() => break,
            done = d.outbox.next_done() => done?,
            _ = tokio::time::sleep(wait.unwrap_or(Duration::ZERO)), if wait.is_some() => {
                d.join.handle_timeout(now_ms());
            }
            _ = tokio::time::sleep_until(commit_due.unwrap_or_else(Instant::now).into()), if commit_due.is_some() => {}
            msg = consumer.recv() => {
                let Some(msg) = rejoin.readable(msg, &consumer, SERVICE, "reading groups and predictions")? else { continue };
                if rebalances.moved(&mut generation) {
                    d.on_reassigned(&consumer).await?;
                }
                kafka::consumed(&consumer, &msg);
                d.on_message(&msg).await?;
            }
        }
        if d.catch_up.as_ref().is_some_and(|c| c.done(Instant::now())) {
            tracing::info!("caught up with the backlog; deadlines act from now on");
            d.catch_up = None;
            d.replay_ended();
            d.join.handle_timeout(now_ms());
        }
        d.flush_events().await?;
        if last_store.elapsed() >= Duration::from_millis(20) {
            if d.txn.is_none() {
                d.store(&consumer);
            }
            // Gauges that scan the join's state: refreshed every 20 ms, not per message.
            metrics::gauge!(names::DECODER_OPEN_GROUPS).set(d.join.open_groups() as f64);
            metrics::gauge!(names::DECODER_LAGGING_PARTITIONS).set(d.join.lagging_partitions().len() as f64);
            last_store = Instant::now();
        }
        if d.txn.as_ref().is_some_and(|t| Instant::now() >= t.due_at(&d.outbox)) {
            d.commit(&consumer, &rebalances, generation).await?;
        }
    }
    if d.txn.is_some() {
        d.commit(&consumer, &rebalances, generation).await?;
    } else {
        d.outbox.drain().await?;
        d.store(&consumer);
        let _ = consumer.commit_consumer_state(CommitMode::Sync);
    }
    tracing::info!(open_groups = d.join.len(), suppressed = d.suppressed, "decoder stopped");
    Ok(())
}

impl Decoder {
    /// After a rebalance. At least once: the groups of partitions given back stay (they
    /// resume where this decoder left off, see `parm_common::rebalance`), so nothing
    /// already answered is answered again; the groups of partitions that went elsewhere are
    /// forgotten. Exactly once: the open transaction is aborted and all state goes, since
    /// every partition restarts at its committed offset. Either way, the partitions that
    /// start from their committed offsets first get the answers already given read back
    /// (see `crate::restore`), and are replayed up to their current end before deadlines
    /// act.
    async fn on_reassigned(&mut self, consumer: &StreamConsumer<ParmContext>) -> anyhow::Result<()> {
        let r = kafka::reassigned(consumer);
        let fresh: HashSet<(String, i32)> = match self.txn.as_mut() {
            Some(txn) => {
                txn.abort(&self.outbox)?;
                self.join = Join::new(self.args.join_config());
                self.links = GroupLinks::default();
                self.outbox = Outbox::new();
                self.snapshots.clear();
                self.answers.clear();
                consumer.context().positions().retain(&HashSet::new());
                r.assigned.clone()
            }
            None => {
                let dropped: std::collections::BTreeSet<i32> = r.dropped.iter().map(|(_, p)| *p).collect();
                for p in dropped {
                    self.join.forget_partition(p, &[GROUPS, PREDICTIONS, PARITY]);
                }
                r.assigned.difference(&r.resumed).cloned().collect()
            }
        };
        if fresh.is_empty() {
            return Ok(()); // everything resumes where it was: nothing to replay
        }
        // The broker may not answer now (an outage during the rebalance): the decoder goes on
        // without the answers it could not read back, and may then answer a replayed query
        // twice, as before this existed; it never stops or loses a query for it.
        let from_ms = self.restore_from(consumer, &fresh);
        // Until the groups rebuilt from the replay are gone, what this decoder commits must
        // still reach back as far (without the committed bound, as far as a group lives).
        let floor = from_ms.as_ref().map_or_else(|_| now_ms() as i64 - self.args.answers_keep_ms() as i64, |f| *f);
        let floor = self.replay_floor.map_or(floor, |(held, _)| held.min(floor));
        self.replay_floor = Some((floor, None));
        let restored = match from_ms {
            Ok(from_ms) => restore(&self.args.common.kafka, &self.topics.results, from_ms, &mut self.answers).await,
            Err(e) => Err(e),
        };
        if let Err(e) = restored {
            tracing::warn!(error = %format!("{e:#}"), "could not read back the answers already given; going on without them");
        }
        let started = Instant::now();
        let targets: HashMap<(String, i32), i64> =
            tokio::task::block_in_place(|| replay_targets(consumer)).into_iter().filter(|(k, _)| fresh.contains(k)).collect();
        if targets.is_empty() {
            self.replay_ended();
            return Ok(());
        }
        tracing::info!(partitions = targets.len(), took_ms = started.elapsed().as_millis() as u64, "replaying the backlog before deadlines act");
        self.catch_up = Some(CatchUp::new(targets, Instant::now() + Duration::from_millis(self.args.catch_up_ms)));
        Ok(())
    }

    /// From when the answers must be read back before `fresh` partitions are replayed: the
    /// earliest `restore_from` committed with their offsets; without one (offsets
    /// committed by an older parm), the longest a group can live; without any committed
    /// offset, everything (the partitions are replayed from their beginning).
    fn restore_from(&self, consumer: &StreamConsumer<ParmContext>, fresh: &HashSet<(String, i32)>) -> anyhow::Result<i64> {
        let committed = delivery::committed_metadata(consumer)?;
        let mut from = i64::MAX;
        for (topic, partition, offset, metadata) in committed.iter().filter(|(t, p, ..)| fresh.contains(&(t.clone(), *p))) {
            let at = match (offset, metadata_field(metadata, RESTORE_FROM)) {
                (None, _) => 0,
                (Some(_), Some(at)) => at,
                (Some(_), None) => {
                    tracing::debug!(%topic, partition, "committed offset without restore_from: reading back the longest a group can live");
                    now_ms() as i64 - self.args.answers_keep_ms() as i64
                }
            };
            from = from.min(at);
        }
        Ok(if from == i64::MAX { now_ms() as i64 } else { from })
    }

    /// The replay after the last assignment is over: groups formed from now on hold only
    /// inputs read for the first time.
    fn replay_ended(&mut self) {
        if let Some((_, end @ None)) = self.replay_floor.as_mut() {
            *end = Some(now_ms());
        }
    }

    /// The `restore_from` to commit with the offsets now (see `crate::restore`): the oldest
    /// group held, less the late linger and the clock skew. A group rebuilt from a replay
    /// was first formed, and maybe answered, by an earlier session, before the time this
    /// session saw it: while one is held (the replay runs, or the oldest group is older
    /// than its end), the bound read back at the assignment still applies. (Without this,
    /// a second restart read back too little and answered replayed queries again.)
    fn restore_from_now(&self) -> String {
        let margin = self.args.late_linger_ms.saturating_add(self.args.max_clock_skew_ms);
        let at = restore_bound(self.join.oldest_since(), now_ms(), margin, self.replay_floor);
        format!("{RESTORE_FROM}={at}")
    }

    /// Keeps the span of a prediction (member `index`, -1 − j for parity j) for the trace
    /// links of its group's results, until the group's hard deadline and the late linger.
    fn keep_link(&mut self, group_id: &str, index: i32, cx: &Context, hard_deadline_at: u64) {
        let span = cx.span().span_context().clone();
        if span.is_valid() {
            self.links.add(group_id, index, span, hard_deadline_at.saturating_add(self.args.late_linger_ms));
        }
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
        self.keep_link(&group_id, arrival.index as i32, cx, arrival.hard_deadline_at);
        // Used when the prediction is answered before its manifest arrives: the result
        // then joins the query's trace through the prediction's own span.
        arrival.meta.traceparent = telemetry::traceparent(cx);
        self.join.on_prediction(&group_id, arrival, origin, now);
        Ok(())
    }

    fn on_parity(&mut self, payload: &[u8], origin: Origin, now: u64, cx: &Context) -> Result<(), Refusal> {
        let p = intake::parity(payload, now, self.args.max_deadline_ms, &self.skew)?;
        self.keep_link(&p.group_id, -1 - p.parity_index as i32, cx, p.hard_deadline_at);
        self.join.on_parity(&p.group_id, p.parity_index, p.members, p.output, p.hard_deadline_at, origin, now);
        Ok(())
    }

    /// Writes every decision the join made and updates the metrics.
    async fn flush_events(&mut self) -> anyhow::Result<()> {
        let mut sends = Vec::new();
        while let Some(event) = self.join.poll_event() {
            match event {
                Event::Result(e) => {
                    if !self.answers.record(&e.query_id, e.meta.sent_at_ms, now_ms()) {
                        // Answered already (a replay after a crash or a rebalance).
                        self.suppressed += 1;
                        metrics::counter!(names::DECODER_SUPPRESSED).increment(1);
                        tracing::debug!(query_id = %e.query_id, "not answering again a query already answered");
                        continue;
                    }
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
                    let links = self.links.links_for(&e.group_id, e.index as i32, e.source == Source::Reconstructed).into_iter().map(Link::with_context).collect();
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

    /// Stores the newest offsets whose results are all acknowledged (at least once).
    fn store(&mut self, consumer: &StreamConsumer<ParmContext>) {
        self.snapshots.push_back((self.outbox.next_seq(), self.join.committable()));
        let acked = self.outbox.acked_before();
        let mut safe = None;
        while self.snapshots.front().is_some_and(|(seq, _)| *seq <= acked) {
            safe = self.snapshots.pop_front().map(|(_, s)| s);
        }
        let Some(offsets) = safe else { return };
        store_offsets_with_metadata(consumer, &self.with_names(offsets));
    }

    /// Commits the open transaction with the join's offsets (exactly once). A rebalance
    /// not yet handled must not commit: the state it would commit for is gone.
    async fn commit(&mut self, consumer: &StreamConsumer<ParmContext>, rebalances: &kafka::RebalanceCounter, generation: u64) -> anyhow::Result<()> {
        let Some(txn) = self.txn.as_mut() else { return Ok(()) };
        txn.flush(&mut self.outbox).await?;
        if rebalances.get() != generation {
            return Ok(()); // the next message handles the rebalance (and aborts)
        }
        let offsets = self.with_names(self.join.committable());
        if let Some(txn) = self.txn.as_mut() {
            txn.commit(consumer, &self.outbox, offsets)?;
        }
        Ok(())
    }

    fn with_names(&self, offsets: Vec<(u8, i32, i64)>) -> Vec<(String, i32, i64, String)> {
        let names = [&self.topics.groups, &self.topics.predictions, &self.topics.parity_predictions];
        let metadata = self.restore_from_now();
        offsets.into_iter().map(|(t, p, o)| (names[usize::from(t).min(2)].clone(), p, o, metadata.clone())).collect()
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

#[cfg(test)]
mod tests {
    use super::restore_bound;

    #[test]
    fn the_bound_read_back_holds_while_groups_from_its_replay_are_held() {
        let margin = 2_000;
        assert_eq!(restore_bound(Some(10_000), 20_000, margin, None), 8_000, "the oldest group less the margin");
        assert_eq!(restore_bound(None, 20_000, margin, None), 18_000, "no group: now less the margin");
        // Replayed after an assignment that read back from 1_000: while the replay runs,
        // and while a group formed before it ended (at 12_000) is held, 1_000 stands.
        assert_eq!(restore_bound(Some(10_000), 20_000, margin, Some((1_000, None))), 1_000);
        assert_eq!(restore_bound(Some(12_000), 20_000, margin, Some((1_000, Some(12_000)))), 1_000);
        assert_eq!(restore_bound(Some(12_001), 20_000, margin, Some((1_000, Some(12_000)))), 10_001, "only groups formed after the replay");
        assert_eq!(restore_bound(None, 20_000, margin, Some((1_000, Some(12_000)))), 18_000);
        assert_eq!(restore_bound(Some(5_000), 20_000, margin, Some((9_000, None))), 3_000, "the earlier of the two");
    }
}
