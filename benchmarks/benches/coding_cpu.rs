//! CPU time per query of the encoder's and the decoder's own work, without Kafka: what
//! each service does between reading a record and handing the records it makes to the
//! producer. Run: `cargo bench -p parm-benchmarks --bench coding_cpu`.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use parm_common::avro::{decode, encode};
use parm_common::records::{GroupManifest, GroupMember, MemberQuery, ParityPrediction, ParityQuery, Prediction, Query, QueryResult, ResultSource, WireTensor};
use parm_core::grouping::{group_partition, member_partition, GroupBuilder};
use parm_core::join::{Arrival, Event, GroupSpec, MemberSpec};
use parm_core::offsets::Origin;
use parm_core::{top1, Join, JoinConfig, ParityEncoder, Tensor};

const K: usize = 2;

fn image(seed: usize) -> Tensor {
    Tensor::new(vec![1, 28, 28], (0..784).map(|i| ((i * 7 + seed * 13) % 256) as f32 / 255.0).collect()).unwrap()
}

fn query_bytes(i: usize) -> Vec<u8> {
    encode(&Query { id: format!("q-{i}"), tensor: WireTensor::from_tensor(&image(i)), deadline_ms: None, sent_at_ms: 1 }).unwrap()
}

/// One group's worth of encoder work: decode and validate k queries, group them, encode
/// the parity input, and serialize k member queries, the parity query and the manifest.
fn encoder_group(builder: &mut GroupBuilder<(Query, Tensor)>, inputs: &[Vec<u8>], first_offset: i64) -> usize {
    let mut bytes = 0;
    for (i, raw) in inputs.iter().enumerate() {
        let q: Query = decode(raw).unwrap();
        let t = q.tensor.to_tensor().unwrap();
        t.expect_shape(&[1, 28, 28]).unwrap();
        if let Some(g) = builder.push(0, first_offset + i as i64, (q, t), 0) {
            let tensors: Vec<&Tensor> = g.members.iter().map(|m| &m.query.1).collect();
            let parity = ParityEncoder::Addition.encode(K, &tensors).unwrap();
            let dp = group_partition(&g.id, 2);
            let mut members = Vec::new();
            for (j, m) in g.members.iter().enumerate() {
                let mq = MemberQuery {
                    query_id: m.query.0.id.clone(),
                    group_id: g.id.clone(),
                    index: j as i32,
                    tensor: WireTensor::from_tensor(&m.query.1),
                    decoder_partition: dp,
                    sent_at_ms: 1,
                    received_at_ms: 2,
                    deadline_at_ms: 3,
                    hard_deadline_at_ms: 4,
                };
                bytes += encode(&mq).unwrap().len();
                members.push(GroupMember {
                    query_id: mq.query_id,
                    index: j as i32,
                    model_partition: member_partition(g.first_offset, j, 4),
                    sent_at_ms: 1,
                    received_at_ms: 2,
                    deadline_at_ms: 3,
                    hard_deadline_at_ms: 4,
                    traceparent: None,
                });
            }
            let pq = ParityQuery { group_id: g.id.clone(), members: K as i32, k: K as i32, encoder: "addition".into(), tensor: WireTensor::from_tensor(&parity), decoder_partition: dp, hard_deadline_at_ms: 4, parity_model: String::new(), parity_index: 0 };
            bytes += encode(&pq).unwrap().len();
            let m = GroupManifest { group_id: g.id.clone(), k: K as i32, encoder: "addition".into(), created_at_ms: 2, members, has_parity: true, parities: 1 };
            bytes += encode(&m).unwrap().len();
        }
    }
    bytes
}

/// The records a decoder reads for one group.
fn decoder_inputs(n: usize, with_member_1: bool) -> (Vec<u8>, Vec<Vec<u8>>, Vec<u8>) {
    let gid = format!("p0-o{n}");
    let members = (0..K)
        .map(|j| GroupMember {
            query_id: format!("q-{n}-{j}"),
            index: j as i32,
            model_partition: j as i32,
            sent_at_ms: 1,
            received_at_ms: 2,
            deadline_at_ms: 1_000,
            hard_deadline_at_ms: 2_000,
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        })
        .collect();
    let manifest = encode(&GroupManifest { group_id: gid.clone(), k: K as i32, encoder: "addition".into(), created_at_ms: 2, members, has_parity: true, parities: 1 }).unwrap();
    let preds = (0..K)
        .filter(|j| with_member_1 || *j != 1)
        .map(|j| {
            encode(&Prediction {
                query_id: format!("q-{n}-{j}"),
                group_id: gid.clone(),
                index: j as i32,
                model_partition: j as i32,
                sent_at_ms: 1,
                received_at_ms: 2,
                deadline_at_ms: 1_000,
                output: vec![0.1 * j as f32; 10],
                worker: "w".into(),
                batch_size: 1,
                inference_us: 50,
                finished_at_ms: 3,
                hard_deadline_at_ms: 2_000,
            })
            .unwrap()
        })
        .collect();
    let parity = encode(&ParityPrediction { group_id: gid, members: K as i32, output: vec![0.3; 10], worker: "p".into(), batch_size: 1, inference_us: 50, finished_at_ms: 3, hard_deadline_at_ms: 2_000, parity_index: 0 }).unwrap();
    (manifest, preds, parity)
}

/// One group's worth of decoder work: decode the manifest, predictions and parity, run the
/// join (with a reconstruction when a member is missing at its deadline), and serialize
/// the results.
fn decoder_group(join: &mut Join<(i64, i64)>, manifest: &[u8], preds: &[Vec<u8>], parity: &[u8], seq: i64) -> usize {
    let m: GroupManifest = decode(manifest).unwrap();
    let spec = GroupSpec {
        group_id: m.group_id.clone(),
        members: m.members.iter().map(|g| MemberSpec { query_id: g.query_id.clone(), index: g.index as u32, model_partition: g.model_partition, deadline_at: g.deadline_at_ms as u64, hard_deadline_at: g.hard_deadline_at_ms as u64, meta: (g.sent_at_ms, g.received_at_ms) }).collect(),
        has_parity: m.has_parity,
        k: m.k as u32,
        parities: m.parities as u32,
    };
    join.on_manifest(spec, Origin { topic: 0, partition: 0, offset: seq }, 10);
    for (i, raw) in preds.iter().enumerate() {
        let p: Prediction = decode(raw).unwrap();
        let arrival = Arrival {
            query_id: p.query_id,
            index: p.index as u32,
            model_partition: p.model_partition,
            output: p.output,
            deadline_at: p.deadline_at_ms as u64,
            hard_deadline_at: p.hard_deadline_at_ms as u64,
            meta: (p.sent_at_ms, p.received_at_ms),
        };
        join.on_prediction(&p.group_id, arrival, Origin { topic: 1, partition: 0, offset: seq * 2 + i as i64 }, 11);
    }
    let pp: ParityPrediction = decode(parity).unwrap();
    join.on_parity(&pp.group_id, pp.parity_index as u32, pp.members as u32, pp.output, pp.hard_deadline_at_ms as u64, Origin { topic: 2, partition: 0, offset: seq }, 12);
    join.handle_timeout(1_000);
    let mut bytes = 0;
    while let Some(e) = join.poll_event() {
        if let Event::Result(e) = e {
            let r = QueryResult { query_id: e.query_id, group_id: e.group_id, source: e.source.into(), top1: top1(&e.output).map(|i| i as i32), output: e.output, sent_at_ms: e.meta.0, received_at_ms: e.meta.1, emitted_at_ms: e.at as i64, deadline_at_ms: 1_000 };
            debug_assert!(r.source != ResultSource::Unavailable);
            bytes += encode(&r).unwrap().len();
        }
    }
    bytes
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("per_query");
    g.throughput(Throughput::Elements(K as u64));
    let inputs: Vec<Vec<u8>> = (0..K).map(query_bytes).collect();
    g.bench_function("encoder", |b| {
        let mut builder = GroupBuilder::new(K, 5);
        let mut off = 0i64;
        b.iter(|| {
            off += K as i64;
            encoder_group(&mut builder, &inputs, off)
        })
    });
    for (name, full) in [("decoder_all_models", true), ("decoder_one_reconstructed", false)] {
        g.bench_function(name, |b| {
            let mut join = Join::new(JoinConfig::default());
            let mut n = 0i64;
            b.iter_batched(
                || {
                    n += 1;
                    (n, decoder_inputs(n as usize, full))
                },
                |(n, (m, p, pp))| decoder_group(&mut join, &m, &p, &pp, n),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
