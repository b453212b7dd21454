//! Fuzzing the decoder's record handlers, the same `intake` checks and `Join` the service
//! runs, over arbitrary bytes and arbitrary schema-valid manifests, predictions and parity
//! predictions (hostile indexes, counts, deadlines, outputs of any length). It must be
//! total: every record is taken or refused with a reason, never a panic; no deadline the
//! join holds lies beyond the clamp; no query is answered twice; and every group is gone
//! once the clamp and the linger have passed. `PROPTEST_CASES=100000` runs it longer.

use parm_common::avro;
use parm_common::records::{GroupManifest, GroupMember, ParityPrediction, Prediction};
use parm_core::clock::ClockSkew;
use parm_core::join::Event;
use parm_core::offsets::Origin;
use parm_core::{Join, JoinConfig, Policy};
use parm_decoder::intake::{self, QueryMeta};
use proptest::prelude::*;
use std::collections::HashSet;

const MAX_DEADLINE_MS: u64 = 60_000;
const NOW: u64 = 1_000_000;

fn any_output() -> impl Strategy<Value = Vec<f32>> {
    let value = prop_oneof![4 => -10.0f32..10.0, 1 => Just(f32::NAN), 1 => Just(3.0e38f32), 1 => any::<f32>()];
    prop_oneof![4 => prop::collection::vec(-10.0f32..10.0, 10..=10), 1 => prop::collection::vec(value, 0..14)]
}

fn any_deadline() -> impl Strategy<Value = i64> {
    prop_oneof![3 => (NOW as i64)..(NOW as i64 + 500), 1 => Just(i64::MAX), 1 => Just(i64::MIN), 1 => any::<i64>()]
}

/// One record of any of the three kinds, for one of a few groups.
#[derive(Debug, Clone)]
enum Record {
    Manifest(GroupManifest),
    Prediction(Prediction),
    Parity(ParityPrediction),
}

fn any_record() -> impl Strategy<Value = Record> {
    let group = prop_oneof![Just("g0".to_string()), Just("g1".to_string()), ".{0,8}"];
    let index = prop_oneof![4 => 0i32..3, 1 => any::<i32>()];
    let member = (index.clone(), 0i32..3, any_deadline(), any_deadline()).prop_map(|(index, model_partition, d, h)| GroupMember {
        query_id: format!("q{index}"),
        index,
        model_partition,
        sent_at_ms: 0,
        received_at_ms: 0,
        deadline_at_ms: d,
        hard_deadline_at_ms: h,
        traceparent: None,
    });
    prop_oneof![
        (group.clone(), prop::collection::vec(member, 0..5), prop_oneof![Just(2i32), any::<i32>()], any::<bool>(), prop_oneof![1i32..=2, any::<i32>()])
            .prop_map(|(group_id, members, k, has_parity, parities)| Record::Manifest(GroupManifest { group_id, k, encoder: "addition".into(), created_at_ms: 0, members, has_parity, parities })),
        (group.clone(), index, 0i32..3, any_output(), any_deadline(), any_deadline()).prop_map(|(group_id, index, model_partition, output, d, h)| {
            Record::Prediction(Prediction { query_id: format!("q{index}"), group_id, index, model_partition, output, sent_at_ms: 0, received_at_ms: 0, deadline_at_ms: d, worker: "w".into(), batch_size: 1, inference_us: 0, finished_at_ms: 0, hard_deadline_at_ms: h })
        }),
        (group, prop_oneof![1i32..=2, any::<i32>()], any_output(), any_deadline(), prop_oneof![0i32..2, any::<i32>()])
            .prop_map(|(group_id, members, output, h, parity_index)| Record::Parity(ParityPrediction { group_id, members, output, worker: "p".into(), batch_size: 1, inference_us: 0, finished_at_ms: 0, hard_deadline_at_ms: h, parity_index })),
    ]
}

/// The deadlines the encoder would have stamped: fixed per member index.
fn consistent(r: Record) -> Record {
    let hard = |index: i32| NOW as i64 + 200 + 37 * i64::from(index.clamp(0, 8));
    let deadline = |index: i32| NOW as i64 + 50 + 10 * i64::from(index.clamp(0, 8));
    match r {
        Record::Manifest(mut m) => {
            for g in &mut m.members {
                g.deadline_at_ms = deadline(g.index);
                g.hard_deadline_at_ms = hard(g.index);
            }
            Record::Manifest(m)
        }
        Record::Prediction(mut p) => {
            p.deadline_at_ms = deadline(p.index);
            p.hard_deadline_at_ms = hard(p.index);
            Record::Prediction(p)
        }
        Record::Parity(mut p) => {
            p.hard_deadline_at_ms = hard(8);
            Record::Parity(p)
        }
    }
}

fn encode(r: &Record) -> (u8, Vec<u8>) {
    match r {
        Record::Manifest(m) => (0, avro::encode(m).unwrap()),
        Record::Prediction(p) => (1, avro::encode(p).unwrap()),
        Record::Parity(p) => (2, avro::encode(p).unwrap()),
    }
}

/// Feeds records (as bytes) through intake into a join, as the service does; returns the
/// join and every query id answered, with repeats.
fn feed(records: &[(u8, Vec<u8>)], policy: Policy) -> (Join<QueryMeta>, Vec<(String, String)>) {
    let mut join: Join<QueryMeta> = Join::new(JoinConfig { policy, lag_awareness: true, late_linger_ms: 100, max_groups: 3 });
    let mut answered = Vec::new();
    let mut skew = ClockSkew::new(60_000, 1_500);
    let drain = |j: &mut Join<QueryMeta>, answered: &mut Vec<(String, String)>| {
        while let Some(e) = j.poll_event() {
            if let Event::Result(r) = e {
                answered.push((r.group_id, r.query_id));
            }
        }
    };
    for (offset, (topic, bytes)) in records.iter().enumerate() {
        let origin = Origin { topic: *topic, partition: 0, offset: offset as i64 };
        let now = NOW + offset as u64;
        let taken = match topic {
            0 => intake::manifest(bytes, now, MAX_DEADLINE_MS, &mut skew).map(|spec| {
                assert!(spec.members.iter().all(|m| m.hard_deadline_at <= now + MAX_DEADLINE_MS && m.deadline_at <= now + MAX_DEADLINE_MS));
                join.on_manifest(spec, origin, now)
            }),
            1 => intake::prediction(bytes, now, MAX_DEADLINE_MS, &skew).map(|(g, a)| {
                assert!(a.hard_deadline_at <= now + MAX_DEADLINE_MS);
                join.on_prediction(&g, a, origin, now)
            }),
            _ => intake::parity(bytes, now, MAX_DEADLINE_MS, &skew).map(|p| {
                assert!(p.hard_deadline_at <= now + MAX_DEADLINE_MS);
                join.on_parity(&p.group_id, p.parity_index, p.members, p.output, p.hard_deadline_at, origin, now)
            }),
        };
        if taken.is_err() {
            join.observe(origin);
        }
        drain(&mut join, &mut answered);
        join.handle_timeout(now + 30);
        drain(&mut join, &mut answered);
    }
    (join, answered)
}

proptest! {
    #[test]
    fn arbitrary_bytes_are_refused_or_taken_never_a_panic(bytes in prop::collection::vec(any::<u8>(), 0..300), topic in 0u8..3) {
        let (j, _) = feed(&[(topic, bytes)], Policy::Deadline);
        prop_assert!(j.len() <= 1);
    }

    #[test]
    fn hostile_records_never_panic_and_every_group_ends_by_the_clamp(records in prop::collection::vec(any_record(), 1..16), eager in any::<bool>()) {
        let policy = if eager { Policy::Eager } else { Policy::Deadline };
        let encoded: Vec<_> = records.iter().map(encode).collect();
        let (mut j, _) = feed(&encoded, policy);
        prop_assert!(j.len() <= 3, "the group cap holds: {}", j.len());
        // The last hard deadline plus the linger: every group is decided; a group that
        // expired then is remembered (finished) for one more linger.
        let end = NOW + 1_000 + MAX_DEADLINE_MS + 100;
        j.handle_timeout(end);
        j.handle_timeout(end + 100);
        while j.poll_event().is_some() {}
        prop_assert!(j.is_empty(), "every group is gone after the clamp and two lingers");
    }

    #[test]
    fn a_consistent_stream_answers_each_query_at_most_once(records in prop::collection::vec(any_record(), 1..16)) {
        // As the encoder stamps them: a query's deadlines are the same in its manifest and
        // its prediction, and a parity's hard deadline is its group's. (Records that
        // disagree on deadlines are hostile: they are covered above, never a panic, but a
        // query whose group was dropped at one hard deadline can be answered again by a
        // prediction claiming a later one.)
        let records: Vec<Record> = records.into_iter().map(consistent).collect();
        let encoded: Vec<_> = records.iter().map(encode).collect();
        let (mut j, mut answered) = feed(&encoded, Policy::Deadline);
        j.handle_timeout(NOW + 1_000 + MAX_DEADLINE_MS + 100);
        while let Some(e) = j.poll_event() {
            if let Event::Result(r) = e {
                answered.push((r.group_id, r.query_id));
            }
        }
        // Eviction (max_groups 3) may forget a group and take a late input as new; only
        // without evictions must every answer be unique.
        let distinct_groups: HashSet<_> = records.iter().map(|r| match r {
            Record::Manifest(m) => m.group_id.clone(),
            Record::Prediction(p) => p.group_id.clone(),
            Record::Parity(p) => p.group_id.clone(),
        }).collect();
        if distinct_groups.len() <= 3 {
            let unique: HashSet<_> = answered.iter().collect();
            prop_assert_eq!(unique.len(), answered.len(), "a query answered twice: {:?}", answered);
        }
    }
}

/// A decoder whose clock runs 1 s ahead of the encoder's: after one manifest, deadlines are
/// moved onto its clock (1 s later, plus the 3 ms the manifest took), so nothing is
/// reconstructed or given up a second early; and 1 s behind, a second earlier.
#[test]
fn deadlines_stamped_on_a_skewed_encoder_clock_are_moved_onto_this_one() {
    for skew in [1_000i64, -1_000] {
        let mut clock = ClockSkew::new(60_000, 1_500);
        let now = NOW;
        let encoder_now = now as i64 - skew - 3;
        let member = GroupMember {
            query_id: "q0".into(),
            index: 0,
            model_partition: 0,
            sent_at_ms: 0,
            received_at_ms: encoder_now,
            deadline_at_ms: encoder_now + 50,
            hard_deadline_at_ms: encoder_now + 2_000,
            traceparent: None,
        };
        let m = GroupManifest { group_id: "g".into(), k: 2, encoder: "addition".into(), created_at_ms: encoder_now, members: vec![member], has_parity: true, parities: 1 };
        let spec = intake::manifest(&avro::encode(&m).unwrap(), now, MAX_DEADLINE_MS, &mut clock).unwrap();
        assert_eq!(clock.offset_ms(), skew + 3);
        assert_eq!(spec.members[0].deadline_at, now + 50, "skew {skew}: the budget of 50 ms counts from now on this clock");
        assert_eq!(spec.members[0].hard_deadline_at, now + 2_000);
    }
}
