//! Fuzzing the encoder's record handler, the same `intake::admit` and parity encoding the
//! service runs, over arbitrary bytes and arbitrary schema-valid queries. It must be total:
//! every input is admitted or refused with a reason, never a panic; and what it admits
//! always encodes to a finite parity query. `PROPTEST_CASES=100000` runs it longer.

use parm_common::avro;
use parm_common::records::{Query, WireTensor};
use parm_core::ParityEncoder;
use parm_encoder::config::CodingPlan;
use parm_encoder::intake::{admit, Limits};
use proptest::prelude::*;

fn plans() -> Vec<CodingPlan> {
    vec![
        CodingPlan { k: 2, encoder: ParityEncoder::Concatenation, input_shape: vec![1, 4, 4], code: None },
        CodingPlan { k: 4, encoder: ParityEncoder::Addition, input_shape: vec![1, 4, 4], code: None },
    ]
}

fn limits(range: bool) -> Limits {
    Limits { max_id_bytes: 64, max_deadline_ms: 60_000, input_range: range.then_some([0.0, 1.0]) }
}

/// Any f32 at all, with the dangerous ones (huge, NaN, infinite, subnormal) well represented.
fn any_value() -> impl Strategy<Value = f32> {
    prop_oneof![
        Just(3.0e38f32),
        Just(-3.0e38f32),
        Just(f32::MAX),
        Just(f32::NAN),
        Just(f32::INFINITY),
        Just(f32::MIN_POSITIVE / 2.0),
        0.0f32..=1.0,
        any::<f32>(),
    ]
}

fn any_query() -> impl Strategy<Value = Query> {
    let shape = prop_oneof![3 => Just(vec![1i64, 4, 4]), 1 => prop::collection::vec(any::<i64>(), 0..5), 1 => Just(vec![i64::MAX, i64::MAX, 2])];
    (
        prop_oneof![Just(String::new()), "[a-z0-9-]{1,20}", "[a-z0-9-]{1,80}", ".{0,100}"],
        shape,
        // Often exactly one image of in-range pixels, so the admitted path is well exercised.
        prop_oneof![prop::collection::vec(0.0f32..=1.0, 16..=16), prop::collection::vec(any_value(), 16..=16), prop::collection::vec(any_value(), 0..40)],
        any::<Option<i64>>(),
        any::<i64>(),
        prop_oneof![Just(0usize), 0usize..4],
    )
        .prop_map(|(id, shape, values, deadline_ms, sent_at_ms, ragged)| {
            let mut data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            data.truncate(data.len().saturating_sub(ragged));
            Query { id, tensor: WireTensor { shape, data }, deadline_ms, sent_at_ms }
        })
}

proptest! {
    #[test]
    fn arbitrary_bytes_are_refused_or_admitted_never_a_panic(bytes in prop::collection::vec(any::<u8>(), 0..400), range in any::<bool>()) {
        for plan in plans() {
            let _ = admit(&plan, &limits(range), 50, &bytes);
        }
    }

    #[test]
    fn what_is_admitted_is_bounded_and_always_encodes(queries in prop::collection::vec(any_query(), 1..5), range in any::<bool>()) {
        for plan in plans() {
            let limits = limits(range);
            let admitted: Vec<_> = queries
                .iter()
                .filter_map(|q| admit(&plan, &limits, 50, &avro::encode(q).unwrap()).ok())
                .collect();
            for a in &admitted {
                prop_assert!(a.budget_ms <= limits.max_deadline_ms);
                prop_assert!(!a.query.id.is_empty() && a.query.id.len() <= limits.max_id_bytes);
                prop_assert_eq!(a.tensor.shape(), &plan.input_shape[..]);
                prop_assert!(a.tensor.data().iter().all(|v| v.is_finite()));
            }
            for group in admitted.chunks(plan.k) {
                let members: Vec<_> = group.iter().map(|a| &a.tensor).collect();
                let parity = plan.encoder.encode(plan.k, &members);
                prop_assert!(parity.is_ok(), "admitted queries must encode: {:?}", parity.err());
            }
        }
    }
}
