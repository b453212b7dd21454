//! Hostile client records: one of every kind of bad query the encoder must dead-letter
//! without harm, with a word its dead letter's reason must contain. The fault test and the
//! fault benchmark salt live streams with them.

use parm_common::avro;
use parm_common::records::{Query, WireTensor};

/// A bad record as a client would send it.
#[derive(Debug, Clone)]
pub struct Hostile {
    /// The record's Kafka key (short, even where the id inside is not).
    pub key: String,
    pub payload: Vec<u8>,
    /// What the dead letter's reason says (a fragment of it).
    pub reason: &'static str,
}

/// Every kind, keyed `{tag}-{kind}`: pixels of 3e38 (finite, but their sum is not; once
/// a crash loop of the encoder), pixels below the input range, an id of 200 kB, a negative
/// deadline, a shape whose product overflows, and bytes that are no Avro query at all.
pub fn every_kind(tag: &str) -> Vec<Hostile> {
    let pixels = |v: f32| WireTensor { shape: vec![1, 28, 28], data: std::iter::repeat_n(v, 784).flat_map(|f| f.to_le_bytes()).collect() };
    let query = |id: String, tensor: WireTensor, deadline_ms: Option<i64>| avro::encode(&Query { id, tensor, deadline_ms, sent_at_ms: 0 });
    let kinds: Vec<(&str, Option<Vec<u8>>, &'static str)> = vec![
        ("huge", query(format!("{tag}-huge"), pixels(3.0e38), None).ok(), "input range"),
        ("negative", query(format!("{tag}-negative"), pixels(-0.5), None).ok(), "input range"),
        ("long-id", query("x".repeat(200_000), pixels(0.5), None).ok(), "limited to"),
        ("past", query(format!("{tag}-past"), pixels(0.5), Some(-5)).ok(), "at least 0"),
        (
            "shape-overflow",
            query(format!("{tag}-shape-overflow"), WireTensor { shape: vec![i64::MAX / 2, i64::MAX / 2, 4], data: vec![0; 16] }, None).ok(),
            "tensor",
        ),
        ("garbage", Some(vec![0xff; 64]), "decod"),
    ];
    kinds
        .into_iter()
        .filter_map(|(kind, payload, reason)| Some(Hostile { key: format!("{tag}-{kind}"), payload: payload?, reason }))
        .collect()
}
