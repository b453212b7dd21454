//! Fuzzing the Avro decoding of every record on every topic, the first step of every
//! service's handler, over arbitrary bytes and over mutations of valid records (which
//! reach deeper than random bytes). It must return a record or an error, never panic.
//! `PROPTEST_CASES=100000` runs it longer.

use parm_common::avro::{decode, encode};
use parm_common::records::*;
use proptest::prelude::*;

fn decode_all(bytes: &[u8]) {
    let _ = decode::<Query>(bytes);
    let _ = decode::<MemberQuery>(bytes);
    let _ = decode::<ParityQuery>(bytes);
    let _ = decode::<GroupManifest>(bytes);
    let _ = decode::<Prediction>(bytes);
    let _ = decode::<ParityPrediction>(bytes);
    let _ = decode::<QueryResult>(bytes);
    let _ = decode::<DeadLetter>(bytes);
    let _ = decode::<WorkerHealth>(bytes);
}

/// Valid records of a few kinds, to mutate.
fn seeds() -> Vec<Vec<u8>> {
    let t = WireTensor { shape: vec![1, 2, 2], data: vec![0; 16] };
    vec![
        encode(&Query { id: "q".into(), tensor: t.clone(), deadline_ms: Some(5), sent_at_ms: 1 }).unwrap(),
        encode(&MemberQuery { query_id: "q".into(), group_id: "g".into(), index: 1, tensor: t.clone(), decoder_partition: 0, sent_at_ms: 1, received_at_ms: 2, deadline_at_ms: 3, hard_deadline_at_ms: 4 }).unwrap(),
        encode(&ParityQuery { group_id: "g".into(), members: 2, k: 2, encoder: "addition".into(), tensor: t, decoder_partition: 1, hard_deadline_at_ms: 9, parity_model: "m@00000000".into(), parity_index: 1 }).unwrap(),
        encode(&Prediction { query_id: "q".into(), group_id: "g".into(), index: 0, model_partition: 0, sent_at_ms: 1, received_at_ms: 2, deadline_at_ms: 3, output: vec![1.0, 2.0], worker: "w".into(), batch_size: 1, inference_us: 5, finished_at_ms: 6, hard_deadline_at_ms: 7 }).unwrap(),
    ]
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        decode_all(&bytes);
    }

    #[test]
    fn mutated_records_never_panic(seed in 0usize..4, flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6), cut in any::<prop::sample::Index>()) {
        let mut bytes = seeds()[seed].clone();
        for (i, b) in flips {
            let at = i.index(bytes.len());
            bytes[at] = b;
        }
        decode_all(&bytes);
        let end = cut.index(bytes.len() + 1);
        decode_all(&bytes[..end]);
    }
}
