//! The encoder loop: consume queries, close groups, produce members, parity and manifest.
//!
//! Over 400 lines on purpose: the session loop and the handlers it calls share the
//! session's state (consumer, producer, outbox, transaction), and splitting them would
//! pass that state around. The decisions are in `parm_core`, the Kafka plumbing and the
//! delivery modes in `parm_common`; what is left here is the encoder's I/O.

use crate::config::{CodingPlan, EncoderArgs};
use crate::intake::{self, Admitted, Limits};
use parm_core::health::{HealthReport, HealthView, ParityLog, SentParity};
use opentelemetry::Context;
use parm_common::delivery::{self, metadata_field, Transactions};
use parm_common::kafka::{self, store_offsets, RebalanceCounter, Topics};
use parm_common::metrics::{names, Tally};
use parm_common::outbox::Outbox;
use parm_common::records::{GroupManifest, GroupMember, MemberQuery, ParityQuery, Query, WireTensor, WorkerHealth};
use parm_common::shutdown::Shutdown;
use parm_common::telemetry::{self, Consumed};
use parm_common::quarantine::guard;
use parm_common::{avro, dead_letter, now_ms, trouble};
use parm_core::grouping::{group_partition, ClosedGroup, GroupBuilder, MemberPartitions};
use parm_core::offsets::Origin;
use parm_core::Tensor;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer};
use anyhow::Context as _;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SERVICE: &str = "encoder";
/// The commit metadata field (exactly once) that says up to which input offset every
/// record's member query or dead letter is already committed.
const SENT: &str = "sent";

/// A query that passed validation and was sent to its model worker, waiting in an open
/// group for its parity query and manifest.
struct Accepted {
    tensor: Tensor,
    origin: Origin,
    /// The `process` span of the query's consumption.
    cx: Context,
    /// The query as the manifest will describe it.
    member: GroupMember,
    /// The acknowledgement of its member query; the input offset is released only once
    /// this and the group's parity query and manifest are written. None when the member
    /// query was committed before (exactly once, replaying an open group).
    delivery: Option<DeliveryFuture>,
}

/// One encoder session's state: its flags and plan, the open coding groups, where members
/// and parity go, the records not yet acknowledged, and (exactly once) its transaction.
struct Encoder {
    args: EncoderArgs,
    group: String,
    plan: CodingPlan,
    /// Each parity model's identity, on its parity queries (parity j at j).
    parity_models: Vec<String>,
    topics: Topics,
    producer: FutureProducer,
    /// Where each member goes among the model partitions (cached per round).
    member_partitions: MemberPartitions,
    parity_partitions: i32,
    decoder_partitions: i32,
    limits: Limits,
    builder: GroupBuilder<Accepted>,
    outbox: Outbox,
    /// With --route-by-health: the workers' health and the parity queries sent recently.
    health: Option<(HealthView, ParityLog<OwnedHeaders>)>,
    /// Groups sent by kind (full, partial, solo) and parity queries sent again.
    counts: Tally,
    /// Exactly-once: the open transaction.
    txn: Option<Transactions>,
    /// Exactly-once, per input partition: offsets below this had their member query or
    /// dead letter committed already (the open group a restart replays).
    sent: HashMap<i32, i64>,
}

/// Runs the encoder until `shutdown` fires or a write fails (then it returns the error
/// without committing past the unwritten queries, so a restart replays them; exactly once,
/// a failed transaction starts a fresh session, see `parm_common::delivery`).
pub async fn run(args: EncoderArgs, shutdown: Shutdown) -> anyhow::Result<()> {
    let delivery = args.common.delivery.delivery;
    delivery::supervise(SERVICE, delivery, shutdown, |shutdown, started| session(args.clone(), shutdown, started)).await
}

async fn session(args: EncoderArgs, mut shutdown: Shutdown, started: Arc<AtomicBool>) -> anyhow::Result<()> {
    let plan = args.coding_plan()?;
    let parity_models = args.parity_identities()?;
    let limits = args.limits()?;
    let topics = args.common.kafka.topics();
    let model_partitions = kafka::service_partition_count(&args.common.kafka, &topics.model_queries).await?;
    if (model_partitions as usize) < plan.k {
        anyhow::bail!(
            "{} has {model_partitions} partitions but k = {}: the members of a group need distinct model workers; \
             recreate the topics with at least k model partitions (parm topics create --model-partitions N)",
            topics.model_queries, plan.k
        );
    }
    let parity_partitions = kafka::service_partition_count(&args.common.kafka, &topics.parity_queries).await?;
    let decoder_partitions = kafka::service_partition_count(&args.common.kafka, &topics.groups).await?;
    let delivery = args.common.delivery.clone();
    let (producer, txn) = delivery::service_producer(&args.common.kafka, &delivery, &args.group_name())?;
    let (mut consumer, rebalances) = args.common.kafka.service_consumer(&args.group_name(), delivery.delivery)?;
    consumer.subscribe(&[&topics.queries])?;
    let mut rejoin = kafka::Rejoin::new(&args.group_name(), &[&topics.queries]);
    let health_reader = if args.route_by_health {
        let reader = kafka::tail_reader(&args.common.kafka, &topics.health, "health", None)
            .await
            .with_context(|| format!("--route-by-health reads {}; create it with parm topics create", topics.health))?;
        Some(reader)
    } else {
        None
    };
    tracing::info!(route_by_health = args.route_by_health, k = plan.k, r = plan.parities(), encoder = %plan.encoder, model_partitions, parity_partitions, decoder_partitions, "encoder started");

    let resend_window_ms = args.resend_window_ms;
    let mut enc = Encoder {
        builder: GroupBuilder::new(plan.k, args.linger_ms),
        limits,
        group: args.group_name(),
        args,
        plan,
        parity_models,
        topics,
        producer,
        member_partitions: MemberPartitions::new(model_partitions),
        parity_partitions,
        decoder_partitions,
        outbox: Outbox::new(),
        health: health_reader.is_some().then(|| (HealthView::default(), ParityLog::new(resend_window_ms))),
        counts: Default::default(),
        txn,
        sent: HashMap::new(),
    };
    started.store(true, Ordering::SeqCst);
    let mut generation = rebalances.get();
    let mut last_store = Instant::now();
    loop {
        if rejoin.pending() {
            consumer = rejoin.rejoin(&enc.args.common.kafka, consumer, SERVICE)?;
        }
        // A rebalance shows in the counter during a poll, with or without a message.
        if rebalances.moved(&mut generation) {
            enc.on_reassigned(&consumer).await?;
        }
        let linger = enc.builder.next_deadline().map(|t| t.saturating_sub(now_ms()));
        let commit_due = enc.txn.as_ref().map(|t| t.due_at(&enc.outbox));
        tokio::select! {
            _ = shutdown.wait() => break,
            done = enc.outbox.next_done() => done?,
            _ = tokio::time::sleep_until(commit_due.unwrap_or_else(Instant::now).into()), if commit_due.is_some() => {}
            _ = tokio::time::sleep(Duration::from_millis(linger.unwrap_or(0))), if linger.is_some() => {
                for g in enc.builder.poll_expired(now_ms()) {
                    enc.send_group(g, false).await?;
                }
            }
            report = next_report(health_reader.as_ref()) => {
                if let Some(report) = report? {
                    enc.on_health(&report).await?;
                }
            }
            msg = consumer.recv() => {
                let Some(msg) = rejoin.readable(msg, &consumer, SERVICE, "reading queries")? else { continue };
                if rebalances.moved(&mut generation) {
                    enc.on_reassigned(&consumer).await?;
                }
                kafka::consumed(&consumer, &msg);
                enc.on_message(&msg).await?;
            }
        }
        if enc.txn.is_none() && last_store.elapsed() >= Duration::from_millis(20) {
            store(&consumer, &enc);
            last_store = Instant::now();
        }
        if enc.txn.as_ref().is_some_and(|t| Instant::now() >= t.due_at(&enc.outbox)) {
            enc.commit(&consumer, &rebalances, generation).await?;
        }
    }
    for g in enc.builder.flush() {
        enc.send_group(g, false).await?;
    }
    if enc.txn.is_some() {
        enc.commit(&consumer, &rebalances, generation).await?;
    } else {
        enc.outbox.drain().await?;
        store(&consumer, &enc);
        let _ = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync);
    }
    tracing::info!(counts = ?enc.counts, "encoder stopped");
    Ok(())
}

/// The next health report (`None` after a transient error), or never without a reader.
async fn next_report(reader: Option<&StreamConsumer<kafka::ParmContext>>) -> anyhow::Result<Option<rdkafka::message::OwnedMessage>> {
    match reader {
        Some(r) => match r.recv().await {
            Ok(m) => Ok(Some(m.detach())),
            Err(e) => trouble::ride_out(e, SERVICE, "reading health reports").map(|()| None),
        },
        None => std::future::pending().await,
    }
}

/// Stores the offsets whose outputs are acknowledged (at least once).
fn store(consumer: &StreamConsumer<kafka::ParmContext>, enc: &Encoder) {
    let offsets: Vec<_> = enc
        .outbox
        .tracker
        .all_committable()
        .into_iter()
        .map(|(_, p, o)| (enc.topics.queries.clone(), p, o))
        .collect();
    store_offsets(consumer, &offsets);
}

impl Encoder {
    /// After a rebalance. At least once: a partition given back resumes where this encoder
    /// left off (see `parm_common::rebalance`), so its open group stays; the open group of
    /// a partition now owned by another encoder is closed and sent as it is (its members
    /// were sent already, and the decoder needs the manifest), and its input holds are
    /// dropped: the new owner replays from the committed offset. Exactly once: the open
    /// transaction is aborted and every open group goes; every partition restarts at its
    /// committed offset, the first of its open group, whose members' queries are not sent
    /// again where the commit says they are in (`sent`).
    async fn on_reassigned(&mut self, consumer: &StreamConsumer<kafka::ParmContext>) -> anyhow::Result<()> {
        let r = kafka::reassigned(consumer);
        if let Some(txn) = self.txn.as_mut() {
            txn.abort(&self.outbox)?;
            self.builder = GroupBuilder::new(self.plan.k, self.args.linger_ms);
            self.outbox = Outbox::new();
            if let Some((_, log)) = self.health.as_mut() {
                *log = ParityLog::new(self.args.resend_window_ms);
            }
            consumer.context().positions().retain(&HashSet::new());
            self.sent = delivery::committed_metadata(consumer)?
                .into_iter()
                .filter_map(|(_, partition, _, metadata)| metadata_field(&metadata, SENT).map(|sent| (partition, sent)))
                .collect();
            return Ok(());
        }
        for (_, partition) in &r.dropped {
            if let Some(g) = self.builder.close_now(*partition) {
                self.send_group(g, false).await?;
            }
            self.outbox.tracker.forget(0, *partition);
        }
        Ok(())
    }

    /// Commits the open transaction with the input offsets (exactly once); each carries
    /// how far this encoder has sent member queries, so that a restart does not send the
    /// open group's members again.
    async fn commit(&mut self, consumer: &StreamConsumer<kafka::ParmContext>, rebalances: &RebalanceCounter, generation: u64) -> anyhow::Result<()> {
        let Some(txn) = self.txn.as_mut() else { return Ok(()) };
        txn.flush(&mut self.outbox).await?;
        if rebalances.get() != generation {
            return Ok(()); // the next message handles the rebalance (and aborts)
        }
        let tracker = &self.outbox.tracker;
        let offsets = tracker
            .all_committable()
            .into_iter()
            .map(|(_, p, o)| {
                let sent = tracker.observed_next(0, p).unwrap_or(o).max(self.sent.get(&p).copied().unwrap_or(0));
                (self.topics.queries.clone(), p, o, format!("{SENT}={sent}"))
            })
            .collect();
        txn.commit(consumer, &self.outbox, offsets)
    }

    /// Whether this input record's member query or dead letter is committed already.
    fn already_sent(&self, partition: i32, offset: i64) -> bool {
        self.sent.get(&partition).is_some_and(|sent| offset < *sent)
    }

    async fn on_message(&mut self, msg: &BorrowedMessage<'_>) -> anyhow::Result<()> {
        let origin = Origin { topic: 0, partition: msg.partition(), offset: msg.offset() };
        self.outbox.tracker.hold(origin);
        let received_at = now_ms();
        let key = msg.key().and_then(|k| std::str::from_utf8(k).ok());
        let parent = telemetry::extract(msg.headers());
        let consumed = Consumed { topic: msg.topic(), partition: msg.partition(), offset: msg.offset(), consumer_group: &self.group, key };
        let cx = telemetry::process_span(SERVICE, &consumed, &parent, vec![]);
        let payload = msg.payload().unwrap_or_default();
        let admitted = guard(|| intake::admit(&self.plan, &self.limits, self.args.deadline_ms, payload));
        match admitted {
            Ok(Admitted { query, tensor, budget_ms }) => {
                metrics::counter!(names::ENCODER_QUERIES).increment(1);
                let solo = self.bound_for_slow_worker(msg.partition(), msg.offset(), received_at);
                if solo {
                    // Its group must not wait for a partner: close what is open, then it alone.
                    if let Some(g) = self.builder.close_now(msg.partition()) {
                        self.send_group(g, false).await?;
                    }
                }
                let accepted = self.send_member(msg.partition(), msg.offset(), query, tensor, budget_ms, received_at, origin, cx).await?;
                let mut closed = self.builder.push(msg.partition(), msg.offset(), accepted, received_at);
                if solo && closed.is_none() {
                    closed = self.builder.close_now(msg.partition());
                }
                if let Some(g) = closed {
                    self.send_group(g, solo).await?;
                }
            }
            Err(_) if self.already_sent(msg.partition(), msg.offset()) => {
                self.outbox.push(vec![origin], Vec::new()); // its dead letter is committed
            }
            Err((query_id, reason)) => {
                let letter = dead_letter::for_message(SERVICE, msg, query_id, reason);
                let f = dead_letter::send(&self.producer, &self.topics.dead_letters, &letter).await?;
                self.outbox.push(vec![origin], vec![(f, self.topics.dead_letters.clone())]);
            }
        }
        Ok(())
    }

    /// Whether the next query of `input_partition` would go to a model worker that says it
    /// is slow (never without --route-by-health).
    fn bound_for_slow_worker(&mut self, input_partition: i32, offset: i64, now: u64) -> bool {
        let Some((view, _)) = &self.health else { return false };
        let slot = self.builder.peek_slot(input_partition, offset);
        let model_partition = self.member_partitions.get(slot.first_offset, slot.index);
        view.is_slow("model", model_partition, now)
    }

    /// A health report arrived: remember it, and if a parity worker has just turned slow,
    /// send the parity queries it was given lately to healthy ones.
    async fn on_health(&mut self, msg: &rdkafka::message::OwnedMessage) -> anyhow::Result<()> {
        let now = now_ms();
        let Some((view, log)) = &mut self.health else { return Ok(()) };
        let report: WorkerHealth = match avro::decode(msg.payload().unwrap_or_default()) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("ignoring an unreadable health report: {e:#}");
                return Ok(());
            }
        };
        let mut sends = Vec::new();
        let report = HealthReport { worker: report.worker, role: report.role, partitions: report.partitions, slow: report.slow };
        for slow in view.record(report, now) {
            for sent in log.take_recent(slow, now) {
                // The next healthy partition, not one of the group's other parities.
                let target = view.healthy_parity_partition_apart(slow.saturating_add(1) % self.parity_partitions.max(1), self.parity_partitions, &sent.beside, now);
                if target == slow {
                    continue; // every parity worker is slow: nowhere better to go
                }
                let f = kafka::send(&self.producer, &self.topics.parity_queries, Some(target), &sent.group_id, &sent.payload, sent.headers).await?;
                sends.push((f, self.topics.parity_queries.clone()));
            }
        }
        if !sends.is_empty() {
            metrics::counter!(names::ENCODER_PARITY_RESENT).increment(sends.len() as u64);
            self.counts.add("parity resent", sends.len() as u64);
            tracing::debug!(resent = sends.len(), "a parity worker turned slow: its recent parity queries went to others");
            // Nothing to release on acknowledgement: the originals already hold their inputs.
            self.outbox.push(Vec::new(), sends);
        }
        Ok(())
    }

    /// Sends a query to its model worker at once, in the group it lands in.
    #[allow(clippy::too_many_arguments)]
    async fn send_member(
        &mut self,
        partition: i32,
        offset: i64,
        query: Query,
        tensor: Tensor,
        budget_ms: u64,
        received_at: u64,
        origin: Origin,
        cx: Context,
    ) -> anyhow::Result<Accepted> {
        let slot = self.builder.peek_slot(partition, offset);
        // Both are at most received_at + --max-deadline-ms (intake clamps the budget, and the
        // hard deadline is checked against the maximum at start).
        let at = |ms: u64| i64::try_from(received_at.saturating_add(ms)).unwrap_or(i64::MAX);
        let deadline_at = at(budget_ms);
        let hard_deadline_at = at(self.args.hard_deadline_ms.max(budget_ms));
        let model_partition = self.member_partitions.get(slot.first_offset, slot.index);
        let send_cx = telemetry::send_span(SERVICE, &self.topics.model_queries, Some(model_partition), &query.id, &cx, vec![]);
        let record = MemberQuery {
            query_id: query.id.clone(),
            group_id: slot.group_id.clone(),
            index: slot.index as i32,
            tensor: query.tensor,
            decoder_partition: group_partition(&slot.group_id, self.decoder_partitions),
            sent_at_ms: query.sent_at_ms,
            received_at_ms: received_at as i64,
            deadline_at_ms: deadline_at,
            hard_deadline_at_ms: hard_deadline_at,
        };
        let delivery = if self.already_sent(partition, offset) {
            None
        } else {
            Some(kafka::send(&self.producer, &self.topics.model_queries, Some(model_partition), &record.query_id, &avro::encode(&record)?, telemetry::inject(&send_cx)).await?)
        };
        let member = GroupMember {
            query_id: record.query_id,
            index: record.index,
            model_partition,
            sent_at_ms: record.sent_at_ms,
            received_at_ms: record.received_at_ms,
            deadline_at_ms: deadline_at,
            hard_deadline_at_ms: hard_deadline_at,
            traceparent: telemetry::traceparent(&send_cx),
        };
        Ok(Accepted { tensor, origin, cx, member, delivery })
    }

    /// The r parity inputs of a group's members: parity 0 by the plan's encoder (the sum,
    /// or the concatenation), parity j > 0 by row j of the code. None when a member cannot
    /// be encoded (intake keeps every value in range, so this should not happen; the group
    /// then goes out without parity and its queries get MODEL or UNAVAILABLE answers).
    fn encode_parities(&mut self, group_id: &str, tensors: &[&Tensor]) -> Option<Vec<Tensor>> {
        let (plan, k) = (&self.plan, self.plan.k);
        let encoded = guard(|| {
            let mut inputs = vec![plan.encoder.encode(k, tensors).map_err(|e| (None, e.to_string()))?];
            if let Some(code) = &plan.code {
                for j in 1..code.r() {
                    inputs.push(code.encode(j, tensors).map_err(|e| (None, e.to_string()))?);
                }
            }
            Ok(inputs)
        });
        match encoded {
            Ok(inputs) => Some(inputs),
            Err((_, reason)) => {
                tracing::error!(group = %group_id, %reason, "could not encode a parity query; the group is sent without parity");
                self.counts.add("not encodable", 1);
                None
            }
        }
    }

    /// Sends a closed group's parity queries and manifest.
    /// `solo`: the group was closed early for a query bound for a slow worker (for metrics).
    async fn send_group(&mut self, g: ClosedGroup<Accepted>, solo: bool) -> anyhow::Result<()> {
        let now = now_ms();
        let decoder_partition = group_partition(&g.id, self.decoder_partitions);
        let tensors: Vec<&Tensor> = g.members.iter().map(|m| &m.query.tensor).collect();
        let parity_inputs = if self.args.no_parity { None } else { self.encode_parities(&g.id, &tensors) };
        let has_parity = parity_inputs.is_some();
        let links: Vec<_> = g.members.iter().filter_map(|m| telemetry::link_to(&m.query.cx)).collect();
        let members = g.members.len();
        let mut origins = Vec::with_capacity(members);
        let mut manifest_members = Vec::with_capacity(members);
        let mut sends = Vec::with_capacity(members + 1 + self.plan.parities());
        for pending in g.members {
            let a = pending.query;
            origins.push(a.origin);
            manifest_members.push(a.member);
            if let Some(d) = a.delivery {
                sends.push((d, self.topics.model_queries.clone()));
            }
        }
        let hard_deadline_at = manifest_members.iter().map(|m| m.hard_deadline_at_ms).max().unwrap_or(now as i64);

        let mut parity_partitions_taken = Vec::with_capacity(self.plan.parities());
        let mut to_log = Vec::new();
        for (j, parity_input) in parity_inputs.into_iter().flatten().enumerate() {
            let parity = ParityQuery {
                group_id: g.id.clone(),
                members: members as i32,
                k: self.plan.k as i32,
                encoder: self.plan.encoder.to_string(),
                tensor: WireTensor::from_tensor(&parity_input),
                decoder_partition,
                hard_deadline_at_ms: hard_deadline_at,
                parity_model: self.parity_models.get(j).cloned().unwrap_or_default(),
                parity_index: j as i32,
            };
            // The r parities of a group go to r different parity workers where there are
            // that many, so one slow parity worker holds back at most one of them.
            let mut parity_partition = (group_partition(&g.id, self.parity_partitions) + j as i32) % self.parity_partitions.max(1);
            if let Some((view, _)) = &self.health {
                parity_partition = view.healthy_parity_partition_apart(parity_partition, self.parity_partitions, &parity_partitions_taken, now);
            }
            parity_partitions_taken.push(parity_partition);
            // The parity query starts a trace of its own, linked to every member it encodes.
            let cx = telemetry::send_span(SERVICE, &self.topics.parity_queries, Some(parity_partition), &g.id, &Context::new(), links.clone());
            let payload = avro::encode(&parity)?;
            let headers = telemetry::inject(&cx);
            if self.health.as_ref().is_some_and(|(_, log)| log.is_enabled()) {
                to_log.push(SentParity { at: now, group_id: g.id.clone(), payload: payload.clone(), headers: headers.clone(), beside: Vec::new() });
            }
            let f = kafka::send(&self.producer, &self.topics.parity_queries, Some(parity_partition), &g.id, &payload, headers).await?;
            sends.push((f, self.topics.parity_queries.clone()));
        }
        // Logged once every parity's partition is known, so that a second send of one can
        // avoid the partitions of the others.
        if let Some((_, log)) = self.health.as_mut() {
            for (sent, &partition) in to_log.into_iter().zip(&parity_partitions_taken) {
                log.push(partition, SentParity { beside: parity_partitions_taken.clone(), ..sent });
            }
        }

        let manifest = GroupManifest {
            group_id: g.id.clone(),
            k: self.plan.k as i32,
            encoder: self.plan.encoder.to_string(),
            created_at_ms: now as i64,
            members: manifest_members,
            has_parity,
            parities: self.plan.parities() as i32,
        };
        let cx = telemetry::send_span(SERVICE, &self.topics.groups, Some(decoder_partition), &g.id, &Context::new(), links);
        let f = kafka::send(&self.producer, &self.topics.groups, Some(decoder_partition), &g.id, &avro::encode(&manifest)?, telemetry::inject(&cx)).await?;
        sends.push((f, self.topics.groups.clone()));

        let kind = if members == self.plan.k {
            "full"
        } else if solo {
            "solo"
        } else {
            "partial"
        };
        metrics::counter!(names::ENCODER_GROUPS, "kind" => kind).increment(1);
        self.counts.add(kind, 1);
        // Each query was held on receipt; the hold goes once all of the group is written.
        self.outbox.push(origins, sends);
        Ok(())
    }
}
