//! Fuzzing the workers' record handler, the same `intake::admit` and guarded inference the
//! service runs, over arbitrary bytes and arbitrary schema-valid member and parity queries
//! (hostile values, shapes, partitions, codes). It must be total: every record is admitted
//! or refused with a reason, never a panic; what it admits has the model's shape and a
//! decoder partition that exists, and running it gives finite outputs or a refusal.
//! `PROPTEST_CASES=100000` runs it longer.

use parm_common::avro;
use parm_common::model::{resolve, Model};
use parm_common::records::{MemberQuery, ParityQuery, WireTensor};
use parm_core::ParityEncoder;
use parm_worker::inference::run_guarded;
use parm_worker::intake::{admit, Expect};
use parm_worker::Role;
use proptest::prelude::*;
use std::sync::OnceLock;

/// The real MNIST MLP F (784 inputs), as a model worker serves it.
fn model() -> &'static Model {
    static M: OnceLock<std::sync::Arc<Model>> = OnceLock::new();
    M.get_or_init(|| Model::load(&resolve("mnist-mlp")).expect("models/mnist-mlp.json"))
}

fn expect(role: Role) -> Expect {
    Expect {
        role,
        model: "mnist-mlp".into(),
        input_shape: vec![1, 28, 28],
        k: Some(2),
        encoder: ParityEncoder::Addition,
        // Two parities, as a worker of an r = 2 code serves them.
        identities: vec!["mnist-mlp-parity-add-k2@00000001".into(), "mnist-mlp-parity-add-k2-r2-p1@00000002".into()],
        output_topic: "t.predictions".into(),
        output_partitions: 2,
    }
}

fn any_value() -> impl Strategy<Value = f32> {
    prop_oneof![Just(3.0e38f32), Just(-3.0e38f32), Just(f32::NAN), Just(f32::INFINITY), Just(f32::MIN_POSITIVE / 2.0), 0.0f32..=1.0, any::<f32>()]
}

fn any_tensor() -> impl Strategy<Value = WireTensor> {
    let shape = prop_oneof![4 => Just(vec![1i64, 28, 28]), 1 => prop::collection::vec(any::<i64>(), 0..4), 1 => Just(vec![i64::MAX, 2, 2])];
    let fill = prop_oneof![Just(0.5f32), any_value()];
    (shape, fill, any_value(), 0usize..800, prop_oneof![4 => Just(0usize), 1 => 0usize..4]).prop_map(|(shape, fill, odd, at, cut)| {
        let mut values = vec![fill; 784];
        values[at.min(783)] = odd;
        let mut data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        data.truncate(data.len() - cut);
        WireTensor { shape, data }
    })
}

fn any_member() -> impl Strategy<Value = MemberQuery> {
    (".{0,40}", any_tensor(), prop_oneof![0i32..8, any::<i32>()], prop_oneof![0i32..3, any::<i32>()], any::<i64>(), any::<i64>()).prop_map(
        |(id, tensor, index, decoder_partition, t, hard)| MemberQuery {
            query_id: id.clone(),
            group_id: format!("g-{id}"),
            index,
            tensor,
            decoder_partition,
            sent_at_ms: t,
            received_at_ms: t,
            deadline_at_ms: t,
            hard_deadline_at_ms: hard,
        },
    )
}

fn any_parity() -> impl Strategy<Value = ParityQuery> {
    (
        any_tensor(),
        prop_oneof![1i32..=2, any::<i32>()],
        prop_oneof![Just(2i32), any::<i32>()],
        prop_oneof![Just("addition".to_string()), Just("concatenation".to_string()), ".{0,12}"],
        prop_oneof![0i32..3, any::<i32>()],
        any::<i64>(),
        prop_oneof![
            Just(String::new()),
            Just("mnist-mlp-parity-add-k2@00000001".to_string()),
            Just("mnist-mlp-parity-add-k2-r2-p1@00000002".to_string()),
            Just("mnist-mlp-parity-add-k2@ffffffff".to_string())
        ],
        prop_oneof![0i32..3, any::<i32>()],
    )
        .prop_map(|(tensor, members, k, encoder, decoder_partition, hard, parity_model, parity_index)| ParityQuery {
            group_id: "g".into(),
            members,
            k,
            encoder,
            tensor,
            decoder_partition,
            hard_deadline_at_ms: hard,
            parity_model,
            parity_index,
        })
}

proptest! {
    #[test]
    fn arbitrary_bytes_are_refused_or_admitted_never_a_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        for role in [Role::Model, Role::Parity] {
            let _ = admit(&expect(role), &bytes);
        }
    }

    #[test]
    fn admitted_member_queries_fit_the_model_and_run_to_finite_outputs_or_a_refusal(queries in prop::collection::vec(any_member(), 1..4)) {
        let e = expect(Role::Model);
        let admitted: Vec<_> = queries.iter().filter_map(|q| admit(&e, &avro::encode(q).unwrap()).ok()).collect();
        for a in &admitted {
            prop_assert_eq!(a.tensor.shape(), &e.input_shape[..]);
            prop_assert!((0..e.output_partitions).contains(&a.decoder_partition));
        }
        let tensors: Vec<_> = admitted.iter().map(|a| a.tensor.clone()).collect();
        if tensors.is_empty() {
            return Ok(());
        }
        let outputs = run_guarded(model(), &tensors);
        prop_assert_eq!(outputs.len(), tensors.len(), "one outcome per query");
        for out in outputs.into_iter().flatten() {
            prop_assert!(out.iter().all(|v| v.is_finite()));
        }
    }

    #[test]
    fn parity_queries_of_another_code_are_refused(q in any_parity()) {
        let e = expect(Role::Parity);
        if let Ok(a) = admit(&e, &avro::encode(&q).unwrap()) {
            prop_assert_eq!(q.k, 2);
            prop_assert_eq!(q.encoder.as_str(), "addition");
            prop_assert!(usize::try_from(q.parity_index).is_ok_and(|j| j == a.parity_index && j < e.identities.len()), "a parity the worker does not serve was admitted");
            prop_assert!(q.parity_model.is_empty() || q.parity_model == e.identities[a.parity_index], "another parity model's query was admitted");
            prop_assert!((1..=2).contains(&a.index));
            prop_assert!((0..e.output_partitions).contains(&a.decoder_partition));
        }
    }
}

/// The fuzzing above would pass vacuously if nothing were ever admitted: a plain valid
/// member query is admitted and runs to a finite output.
#[test]
fn a_valid_member_query_is_admitted_and_runs() {
    let q = MemberQuery {
        query_id: "q".into(),
        group_id: "g".into(),
        index: 0,
        tensor: WireTensor { shape: vec![1, 28, 28], data: [0.5f32; 784].iter().flat_map(|v| v.to_le_bytes()).collect() },
        decoder_partition: 1,
        sent_at_ms: 0,
        received_at_ms: 0,
        deadline_at_ms: 0,
        hard_deadline_at_ms: 0,
    };
    let a = admit(&expect(Role::Model), &avro::encode(&q).unwrap()).expect("admitted");
    let out = run_guarded(model(), &[a.tensor]);
    assert!(matches!(&out[..], [Ok(v)] if v.len() == 10 && v.iter().all(|x| x.is_finite())), "{out:?}");
}
