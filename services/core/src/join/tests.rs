//! Tests of the join: unit cases for each rule, and property tests over random arrival
//! orders, delays and deadlines.

use super::*;
use proptest::prelude::*;

fn origin(topic: u8, offset: i64) -> Origin {
    Origin { topic, partition: 0, offset }
}

fn spec(k: u32, deadline: u64, hard: u64) -> GroupSpec {
    GroupSpec {
        group_id: "g".into(),
        members: (0..k)
            .map(|i| MemberSpec {
                query_id: format!("q{i}"),
                index: i,
                model_partition: i as i32,
                deadline_at: deadline,
                hard_deadline_at: hard,
                meta: (),
            })
            .collect(),
        has_parity: true,
        k,
        parities: 1,
    }
}

fn arr(index: u32, output: Vec<f32>, hard: u64) -> Arrival {
    Arrival { query_id: format!("q{index}"), index, model_partition: index as i32, output, deadline_at: hard, hard_deadline_at: hard, meta: () }
}

fn results(j: &mut Join) -> Vec<Emission> {
    let mut out = Vec::new();
    while let Some(e) = j.poll_event() {
        if let Event::Result(r) = e {
            out.push(r);
        }
    }
    out
}

fn config(policy: Policy, lag: bool) -> JoinConfig {
    JoinConfig { policy, lag_awareness: lag, late_linger_ms: 100, max_groups: 1000 }
}

#[test]
fn a_group_without_parity_is_finished_when_its_members_are_in() {
    let mut j = Join::new(config(Policy::Deadline, true));
    j.on_manifest(GroupSpec { has_parity: false, ..spec(2, 50, 100) }, origin(0, 0), 0);
    j.on_prediction("g", arr(0, vec![1.0, 0.0], 100), origin(1, 0), 1);
    assert_eq!(j.open_groups(), 1);
    j.on_prediction("g", arr(1, vec![0.0, 1.0], 100), origin(1, 1), 2);
    assert!(results(&mut j).iter().all(|e| e.source == Source::Model));
    assert_eq!(j.open_groups(), 0, "no parity is waited for");
    assert_eq!(j.committable(), vec![(0, 0, 1), (1, 0, 2)]);
}

#[test]
fn a_group_without_parity_answers_a_missing_member_unavailable_at_its_hard_deadline() {
    for policy in [Policy::Deadline, Policy::Eager] {
        let mut j = Join::new(config(policy, true));
        j.on_manifest(GroupSpec { has_parity: false, ..spec(2, 50, 100) }, origin(0, 0), 0);
        j.on_prediction("g", arr(0, vec![1.0, 0.0], 100), origin(1, 0), 1);
        // A stray parity prediction (another deployment's, a misconfiguration) decodes nothing.
        j.on_parity("g", 0, 2, vec![1.0, 1.0], 100, origin(2, 0), 2);
        j.handle_timeout(60);
        assert_eq!(results(&mut j).len(), 1, "{policy}: not reconstructed at the deadline");
        j.handle_timeout(100);
        let r = results(&mut j);
        assert_eq!((r.len(), r[0].source, r[0].index), (1, Source::Unavailable, 1), "{policy}");
        j.on_prediction("g", arr(1, vec![0.0, 1.0], 100), origin(1, 1), 150);
        assert_eq!(j.open_groups(), 0, "{policy}: finished once the late prediction is in");
        assert!(results(&mut j).is_empty());
    }
}

#[test]
fn model_predictions_are_answered_at_once_and_the_group_is_dropped() {
    let mut j = Join::new(config(Policy::Deadline, true));
    j.on_manifest(spec(2, 50, 100), origin(0, 0), 0);
    j.on_prediction("g", arr(0, vec![1.0, 0.0], 100), origin(1, 0), 1);
    j.on_prediction("g", arr(1, vec![0.0, 1.0], 100), origin(1, 1), 2);
    let r = results(&mut j);
    assert_eq!(r.len(), 2);
    assert!(r.iter().all(|e| e.source == Source::Model));
    assert_eq!(j.len(), 1, "kept until the parity arrives");
    j.on_parity("g", 0, 2, vec![1.0, 1.0], 100, origin(2, 0), 3);
    assert_eq!(j.open_groups(), 0, "finished");
    j.handle_timeout(10_000);
    assert!(j.is_empty(), "forgotten after the late linger");
    assert_eq!(j.committable(), vec![(0, 0, 1), (1, 0, 2), (2, 0, 1)]);
}

#[test]
fn deadline_policy_waits_for_the_deadline_then_reconstructs() {
    let mut j = Join::new(config(Policy::Deadline, false));
    j.on_manifest(spec(2, 50, 100), origin(0, 0), 0);
    j.on_prediction("g", arr(0, vec![1.0, 2.0], 100), origin(1, 0), 1);
    j.on_parity("g", 0, 2, vec![1.5, 7.0], 100, origin(2, 0), 2);
    let r = results(&mut j);
    assert_eq!(r.len(), 1);
    assert_eq!(j.next_timeout(), Some(50));
    j.handle_timeout(49);
    assert!(results(&mut j).is_empty());
    j.handle_timeout(50);
    let r = results(&mut j);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].source, Source::Reconstructed);
    assert_eq!(r[0].output, vec![0.5, 5.0]);
    assert_eq!(r[0].at, 50);
    // The real one arrives late and agrees with the reconstruction's top-1.
    j.on_prediction("g", arr(1, vec![0.4, 5.1], 100), origin(1, 1), 60);
    assert!(matches!(j.poll_event(), Some(Event::Late { agreed: Some(true), .. })));
    assert_eq!(j.open_groups(), 0, "finished");
    j.handle_timeout(10_000);
    assert!(j.is_empty(), "forgotten after the late linger");
}

#[test]
fn parity_after_the_deadline_reconstructs_on_the_next_timeout() {
    let mut j = Join::new(config(Policy::Deadline, false));
    j.on_manifest(spec(2, 50, 100), origin(0, 0), 0);
    j.on_prediction("g", arr(0, vec![1.0], 100), origin(1, 0), 1);
    j.handle_timeout(50);
    assert_eq!(results(&mut j).len(), 1);
    j.on_parity("g", 0, 2, vec![3.0], 100, origin(2, 0), 70);
    assert!(results(&mut j).is_empty(), "arrival alone never acts on a deadline");
    assert_eq!(j.next_timeout(), Some(50));
    j.handle_timeout(70);
    let r = results(&mut j);
    assert_eq!((r[0].source, r[0].output.clone()), (Source::Reconstructed, vec![2.0]));
}

#[test]
fn eager_policy_reconstructs_as_soon_as_possible() {
    let mut j = Join::new(config(Policy::Eager, false));
    j.on_manifest(spec(3, 50, 100), origin(0, 0), 0);
    j.on_prediction("g", arr(0, vec![1.0], 100), origin(1, 0), 1);
    j.on_parity("g", 0, 3, vec![6.0], 100, origin(2, 0), 2);
    assert_eq!(results(&mut j).len(), 1);
    j.on_prediction("g", arr(2, vec![2.0], 100), origin(1, 1), 3);
    let r = results(&mut j);
    assert_eq!(r.len(), 2);
    let q1 = r.iter().find(|e| e.query_id == "q1").unwrap();
    assert_eq!((q1.source, q1.output.clone()), (Source::Reconstructed, vec![3.0]));
}

/// A k = 2, r = 2 group: parity 0 encodes X0 + X1, parity 1 X0 + 2·X1 (the code's
/// Vandermonde rows on nodes 1 and 2). With a linear F (the identity here) the parity
/// outputs are exact.
fn two_parities() -> GroupSpec {
    GroupSpec { parities: 2, ..spec(2, 50, 100) }
}

#[test]
fn two_parities_reconstruct_both_missing_members_at_their_deadline() {
    for policy in [Policy::Deadline, Policy::Eager] {
        let mut j = Join::new(config(policy, false));
        j.on_manifest(two_parities(), origin(0, 0), 0);
        // F(X0) = [1, 2], F(X1) = [3, 5]: parity 0 = [4, 7], parity 1 = [7, 12].
        j.on_parity("g", 1, 2, vec![7.0, 12.0], 100, origin(2, 0), 2);
        if policy == Policy::Eager {
            assert!(results(&mut j).is_empty(), "one parity cannot decode two missing members");
        }
        j.on_parity("g", 0, 2, vec![4.0, 7.0], 100, origin(2, 1), 3);
        if policy == Policy::Deadline {
            assert!(results(&mut j).is_empty(), "the deadline policy waits for the deadline");
            j.handle_timeout(50);
        }
        let mut r = results(&mut j);
        r.sort_by_key(|e| e.index);
        assert_eq!(r.len(), 2, "{policy}");
        assert!(r.iter().all(|e| e.source == Source::Reconstructed), "{policy}");
        for (e, want) in r.iter().zip([[1.0f32, 2.0], [3.0, 5.0]]) {
            assert!(e.output.iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-4), "{policy}: {:?} vs {want:?}", e.output);
        }
    }
}

#[test]
fn with_two_parities_one_missing_member_is_decoded_from_either_parity() {
    for (parity_index, output) in [(0u32, vec![4.0f32, 7.0]), (1, vec![7.0, 12.0])] {
        let mut j = Join::new(config(Policy::Deadline, false));
        j.on_manifest(two_parities(), origin(0, 0), 0);
        j.on_prediction("g", arr(0, vec![1.0, 2.0], 100), origin(1, 0), 1);
        j.on_parity("g", parity_index, 2, output, 100, origin(2, 0), 2);
        assert_eq!(results(&mut j).len(), 1, "the real prediction");
        j.handle_timeout(50);
        let r = results(&mut j);
        assert_eq!((r.len(), r[0].index, r[0].source), (1, 1, Source::Reconstructed), "parity {parity_index}");
        assert!(r[0].output.iter().zip([3.0f32, 5.0]).all(|(g, w)| (g - w).abs() < 1e-4), "parity {parity_index}: {:?}", r[0].output);
    }
}

#[test]
fn parities_that_come_before_the_manifest_are_kept_by_index() {
    let mut j = Join::new(config(Policy::Deadline, false));
    j.on_parity("g", 1, 2, vec![7.0, 12.0], 100, origin(2, 0), 1);
    j.on_parity("g", 1, 2, vec![0.0, 0.0], 100, origin(2, 1), 1); // a duplicate of parity 1: ignored
    j.on_parity("g", 0, 2, vec![4.0, 7.0], 100, origin(2, 2), 2);
    j.on_manifest(two_parities(), origin(0, 0), 3);
    j.handle_timeout(50);
    let mut r = results(&mut j);
    r.sort_by_key(|e| e.index);
    assert_eq!(r.iter().map(|e| e.source).collect::<Vec<_>>(), vec![Source::Reconstructed; 2]);
    assert!(r[1].output.iter().zip([3.0f32, 5.0]).all(|(g, w)| (g - w).abs() < 1e-4), "{:?}", r[1].output);
}

#[test]
fn a_parity_index_outside_the_code_decodes_nothing() {
    let mut j = Join::new(config(Policy::Deadline, false));
    j.on_manifest(two_parities(), origin(0, 0), 0);
    j.on_prediction("g", arr(0, vec![1.0, 2.0], 100), origin(1, 0), 1);
    j.on_parity("g", 2, 2, vec![9.0, 9.0], 100, origin(2, 0), 2);
    j.handle_timeout(50);
    assert_eq!(results(&mut j).len(), 1, "only the real prediction");
    j.handle_timeout(100);
    let r = results(&mut j);
    assert_eq!((r.len(), r[0].source), (1, Source::Unavailable));
    assert!(j.committable().contains(&(2, 0, 1)), "the stray parity's offset is not held: {:?}", j.committable());
}

#[test]
fn a_partial_group_of_a_two_parity_code_decodes_with_the_empty_slots_as_zeros() {
    // k = 3, r = 2, one member: parity 0 = F(X0), parity 1 = 1·F(X0).
    let mut j = Join::new(config(Policy::Deadline, false));
    let mut s = GroupSpec { parities: 2, k: 3, ..spec(1, 50, 100) };
    s.group_id = "g".into();
    j.on_manifest(s, origin(0, 0), 0);
    j.on_parity("g", 1, 1, vec![2.5], 100, origin(2, 0), 1);
    j.handle_timeout(50);
    let r = results(&mut j);
    assert_eq!((r.len(), r[0].source, r[0].output.clone()), (1, Source::Reconstructed, vec![2.5]));
}

#[test]
fn unavailable_at_the_hard_deadline_when_two_are_missing() {
    let mut j = Join::new(config(Policy::Deadline, false));
    j.on_manifest(spec(2, 50, 100), origin(0, 0), 0);
    j.on_parity("g", 0, 2, vec![3.0], 100, origin(2, 0), 2);
    j.handle_timeout(50);
    assert!(results(&mut j).is_empty());
    j.handle_timeout(100);
    let r = results(&mut j);
    assert_eq!(r.len(), 2);
    assert!(r.iter().all(|e| e.source == Source::Unavailable && e.output.is_empty()));
    j.handle_timeout(200);
    assert!(j.is_empty(), "dropped after the late linger");
}

#[test]
fn predictions_before_their_manifest_wait_for_it_or_expire() {
    let mut j = Join::new(config(Policy::Deadline, false));
    j.on_prediction("g", arr(0, vec![1.0], 100), origin(1, 0), 0);
    j.on_manifest(spec(1, 50, 100), origin(0, 0), 1);
    assert_eq!(results(&mut j)[0].source, Source::Model);

    j.on_prediction("orphan", arr(0, vec![1.0], 100), origin(1, 1), 0);
    assert_eq!(results(&mut j)[0].source, Source::Model, "answered at once, without its manifest");
    j.handle_timeout(199);
    assert_eq!(j.len(), 2);
    j.handle_timeout(200);
    assert!(matches!(j.poll_event(), Some(Event::Expired { inputs: 1, .. })));
    assert_eq!(j.open_groups(), 0);
    // Its query was answered: a manifest that straggles in now does not answer it again.
    j.on_manifest(GroupSpec { group_id: "orphan".into(), ..spec(1, 50, 100) }, origin(0, 1), 250);
    j.handle_timeout(250);
    assert!(results(&mut j).is_empty());
    j.handle_timeout(300);
    assert!(j.is_empty());
}

#[test]
fn a_lagging_partition_gets_its_pending_members_reconstructed_at_once() {
    let mut j = Join::new(config(Policy::Deadline, true));
    let mut a = spec(2, 50, 100);
    a.group_id = "a".into();
    let mut b = spec(2, 80, 130);
    b.group_id = "b".into();
    for (g, off) in [("a", 0), ("b", 1)] {
        let s = if g == "a" { a.clone() } else { b.clone() };
        j.on_manifest(s, origin(0, off), 0);
        j.on_prediction(g, arr(0, vec![1.0], 200), origin(1, off), 1);
        j.on_parity(g, 0, 2, vec![3.0], 200, origin(2, off), 1);
    }
    results(&mut j);
    j.handle_timeout(50); // a's member on partition 1 misses its deadline
    let r = results(&mut j);
    assert_eq!(r.len(), 2, "a reconstructed at its deadline, b at once: {r:?}");
    assert!(r.iter().all(|e| e.source == Source::Reconstructed && e.at == 50));
    assert_eq!(j.lagging_partitions(), vec![1]);
    // A timely prediction from the partition clears the lag.
    let mut c = spec(2, 500, 600);
    c.group_id = "c".into();
    j.on_manifest(c, origin(0, 2), 60);
    j.on_prediction("c", arr(1, vec![1.0], 600), origin(1, 2), 61);
    assert!(j.lagging_partitions().is_empty());
}

#[test]
fn duplicates_are_ignored_and_release_nothing_twice() {
    let mut j = Join::new(config(Policy::Deadline, false));
    j.on_manifest(spec(1, 50, 100), origin(0, 0), 0);
    j.on_manifest(spec(1, 50, 100), origin(0, 1), 0);
    j.on_prediction("g", arr(0, vec![1.0], 100), origin(1, 0), 1);
    j.on_prediction("g", arr(0, vec![1.0], 100), origin(1, 1), 1);
    assert_eq!(results(&mut j).len(), 1);
    j.on_parity("g", 0, 1, vec![1.0], 100, origin(2, 0), 2);
    assert_eq!(j.open_groups(), 0, "finished");
    j.handle_timeout(10_000);
    assert!(j.is_empty(), "forgotten after the late linger");
    assert_eq!(j.committable(), vec![(0, 0, 2), (1, 0, 2), (2, 0, 1)]);
}

/// How one simulated group unfolds: for each member, when (if ever) its prediction
/// arrives; when the parity arrives; when the manifest arrives.
#[derive(Debug, Clone)]
struct Scenario {
    k: u32,
    deadline: u64,
    hard_extra: u64,
    manifest_at: u64,
    member_at: Vec<Option<u64>>,
    parity_at: Option<u64>,
    policy: Policy,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (1u32..=5, 1u64..100, 0u64..100, 0u64..150, prop::bool::ANY).prop_flat_map(|(k, deadline, hard_extra, manifest_at, eager)| {
        (
            prop::collection::vec(prop::option::weighted(0.8, 0u64..300), k as usize),
            prop::option::weighted(0.8, 0u64..300),
        )
            // Times are spread so that no two arrivals share a millisecond: then "was it
            // in when the answer was made" has one meaning.
            .prop_map(move |(member_at, parity_at)| Scenario {
                k,
                deadline: deadline * 8,
                hard_extra: hard_extra * 8,
                // Manifests come by the hard deadline plus a little more than the late
                // linger (50), so that predictions left unclaimed by then are seen expiring;
                // 56 keeps them on multiples of 8, clear of the members' and the parity's
                // milliseconds (+50 made a manifest and a member arrive together).
                manifest_at: (manifest_at * 8).min((deadline + hard_extra) * 8 + 56),
                member_at: member_at.iter().enumerate().map(|(i, t)| t.map(|t| t * 8 + 1 + i as u64)).collect(),
                parity_at: parity_at.map(|t| t * 8 + 7),
                policy: if eager { Policy::Eager } else { Policy::Deadline },
            })
    })
}

/// Linear F: F(x) = W x, with Fp = F; then reconstruction is exact.
fn linear_f(x: f32, i: u32) -> Vec<f32> {
    vec![x, 2.0 * x + i as f32 * 0.0, -x]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn exactly_one_result_per_query_and_never_a_reconstruction_too_early(sc in scenario()) {
        let mut j = Join::new(JoinConfig { policy: sc.policy, lag_awareness: false, late_linger_ms: 50, max_groups: 1000 });
        let hard = sc.deadline + sc.hard_extra;
        let s = spec(sc.k, sc.deadline, hard);
        let xs: Vec<f32> = (0..sc.k).map(|i| i as f32 + 1.5).collect();
        let parity_out = linear_f(xs.iter().sum(), 0);
        // Events in time order; ties: manifest, members, parity.
        let mut arrivals: Vec<(u64, u8, u32)> = vec![(sc.manifest_at, 0, 0)];
        for (i, t) in sc.member_at.iter().enumerate() {
            if let Some(t) = t { arrivals.push((*t, 1, i as u32)); }
        }
        if let Some(t) = sc.parity_at { arrivals.push((t, 2, 0)); }
        arrivals.sort();
        let mut answered: HashMap<String, Emission> = HashMap::new();
        let mut seq = 0i64;
        let mut clock = 0u64;
        let step = |j: &mut Join, now: u64, answered: &mut HashMap<String, Emission>| -> Result<(), TestCaseError> {
            while let Some(t) = j.next_timeout() { if t > now { break; } j.handle_timeout(now); }
            while let Some(e) = j.poll_event() {
                if let Event::Result(r) = e {
                    prop_assert!(answered.insert(r.query_id.clone(), r.clone()).is_none(), "two results for {}", r.query_id);
                }
            }
            Ok(())
        };
        for (n, &(t, kind, i)) in arrivals.iter().enumerate() {
            // let time pass up to this arrival, one millisecond at a time at the decision points
            // (an arrival at the same millisecond as a deadline wins)
            for now in clock..t { if j.next_timeout().is_some_and(|d| d <= now) { step(&mut j, now, &mut answered)?; } }
            clock = t;
            seq += 1;
            match kind {
                0 => j.on_manifest(s.clone(), origin(0, seq), t),
                1 => j.on_prediction("g", arr(i, linear_f(xs[i as usize], i), hard), origin(1, seq), t),
                _ => j.on_parity("g", 0, sc.k, parity_out.clone(), hard, origin(2, seq), t),
            }
            // all arrivals of one millisecond come in before its deadlines act
            if arrivals.get(n + 1).is_none_or(|next| next.0 > t) { step(&mut j, t, &mut answered)?; }
        }
        let end = 8000;
        for now in clock..=end { if j.next_timeout().is_some_and(|d| d <= now) { step(&mut j, now, &mut answered)?; } }
        step(&mut j, end, &mut answered)?;

        prop_assert_eq!(answered.len(), sc.k as usize, "every query answered once");
        prop_assert!(j.is_empty(), "state dropped at the end");
        prop_assert_eq!(j.committable().iter().filter(|(t, _, _)| *t == 0).count(), 1);
        let available = |t: Option<u64>, now: u64| t.is_some_and(|t| t <= now);
        for (i, m) in s.members.iter().enumerate() {
            let r = &answered[&m.query_id];
            let manifest_in = sc.manifest_at <= r.at;
            prop_assert!(manifest_in || r.source == Source::Model, "only a real prediction is answered before the manifest");
            match r.source {
                Source::Model => {
                    prop_assert!(available(sc.member_at[i], r.at));
                    prop_assert_eq!(&r.output, &linear_f(xs[i], i as u32));
                }
                Source::Reconstructed => {
                    prop_assert!(!available(sc.member_at[i], r.at), "reconstructed although the real one was in");
                    prop_assert!(available(sc.parity_at, r.at));
                    for (o, t) in sc.member_at.iter().enumerate() {
                        if o != i { prop_assert!(available(*t, r.at), "reconstructed without member {}", o); }
                    }
                    if sc.policy == Policy::Deadline { prop_assert!(r.at >= sc.deadline, "reconstructed before the deadline"); }
                    let want = linear_f(xs[i], i as u32);
                    for (a, b) in r.output.iter().zip(&want) { prop_assert!((a - b).abs() < 1e-4, "{:?} vs {:?}", r.output, want); }
                }
                Source::Unavailable => {
                    prop_assert!(r.at >= hard, "unavailable before the hard deadline");
                    // Predictions wait for their manifest only until hard deadline + linger.
                    let expired_unclaimed = sc.manifest_at >= hard + 50;
                    prop_assert!(!available(sc.member_at[i], r.at) || expired_unclaimed);
                }
            }
            // The answer is never later than needed: a real prediction in by the hard
            // deadline is always used or beaten by a reconstruction.
            if let Some(t) = sc.member_at[i] {
                if t >= sc.manifest_at && t < hard { prop_assert!(r.source != Source::Unavailable); }
            }
        }
    }
}

proptest! {
    #[test]
    fn reconstruction_of_a_linear_model_is_exact_for_every_erasure(k in 1usize..=8, seed in 0u64..1000) {
        // F(x) = A x for a fixed 3x4 A; parity P = Σ Xi; Fp = F.
        let a = |x: &[f32]| -> Vec<f32> {
            (0..3).map(|r| x.iter().enumerate().map(|(c, v)| v * ((r * 4 + c) as f32 * 0.37 - 1.0)).sum()).collect()
        };
        let xs: Vec<Vec<f32>> = (0..k).map(|i| (0..4).map(|c| ((seed as usize * 31 + i * 7 + c * 3) % 17) as f32 - 8.0).collect()).collect();
        let refs: Vec<crate::Tensor> = xs.iter().map(|x| crate::Tensor::new(vec![4], x.clone()).unwrap()).collect();
        let p = crate::ParityEncoder::Addition.encode(k, &refs.iter().collect::<Vec<_>>()).unwrap();
        let fp = a(p.data());
        let outs: Vec<Vec<f32>> = xs.iter().map(|x| a(x)).collect();
        for j in 0..k {
            let others = outs.iter().enumerate().filter(|(i, _)| *i != j).map(|(_, o)| o.as_slice());
            let got = reconstruct(&fp, others).unwrap();
            for (g, w) in got.iter().zip(&outs[j]) { prop_assert!((g - w).abs() < 1e-3, "k={} j={}: {} vs {}", k, j, g, w); }
        }
    }
}

#[test]
fn state_stays_bounded_over_a_long_run() {
    let mut j = Join::new(config(Policy::Deadline, true));
    let mut max_len = 0;
    for n in 0..20_000u64 {
        let now = n;
        let id = format!("g{n}");
        let mut s = spec(2, now + 20, now + 40);
        s.group_id = id.clone();
        j.on_manifest(s, origin(0, n as i64), now);
        // every 7th group loses a member, every 11th loses its parity, every 13th a late member
        if n % 7 != 0 { j.on_prediction(&id, arr(0, vec![1.0, 0.0], now + 40), origin(1, 2 * n as i64), now); }
        if n % 13 != 0 { j.on_prediction(&id, arr(1, vec![0.0, 1.0], now + 40), origin(1, 2 * n as i64 + 1), now); }
        if n % 11 != 0 { j.on_parity(&id, 0, 2, vec![1.0, 1.0], now + 40, origin(2, n as i64), now); }
        j.handle_timeout(now);
        while j.poll_event().is_some() {}
        max_len = max_len.max(j.len());
    }
    assert!(max_len < 200, "join held {max_len} groups");
    j.handle_timeout(1_000_000);
    assert!(j.is_empty());
}

#[test]
fn a_regrouped_manifest_adds_its_members_and_never_reconstructs() {
    // The encoder crashed and its replay put q0 and q1 in one group where the first run
    // had closed {q0} alone.
    let mut j = Join::new(config(Policy::Deadline, false));
    j.on_manifest(spec(1, 50, 100), origin(0, 0), 0);
    j.on_manifest(spec(2, 50, 100), origin(0, 1), 1);
    j.on_prediction("g", arr(0, vec![1.0], 100), origin(1, 0), 2);
    j.on_parity("g", 0, 1, vec![3.0], 100, origin(2, 0), 3);
    j.on_parity("g", 0, 2, vec![3.0], 100, origin(2, 1), 3);
    j.handle_timeout(50);
    let r = results(&mut j);
    assert_eq!(r.len(), 1, "only q0's real prediction; no reconstruction from an ambiguous parity: {r:?}");
    j.handle_timeout(100);
    let r = results(&mut j);
    assert_eq!((r[0].query_id.as_str(), r[0].source), ("q1", Source::Unavailable));
}

/// One input to the join with hostile values: any index, any deadline (up to u64::MAX),
/// outputs of any length and value, group ids that collide.
#[derive(Debug, Clone)]
enum Op {
    Manifest { group: u8, indexes: Vec<u32>, deadline: u64, hard: u64, has_parity: bool, k: u32, parities: u32 },
    Prediction { group: u8, index: u32, output: Vec<f32>, deadline: u64, hard: u64 },
    Parity { group: u8, index: u32, members: u32, output: Vec<f32>, hard: u64 },
    Tick(u64),
    Forget(i32),
}

fn hostile_time() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..5_000, Just(u64::MAX), Just(u64::MAX - 1), any::<u64>()]
}

/// Outputs of any length and value but empty (the decoder refuses empty or non-finite
/// outputs before they reach the join), including ones whose differences overflow.
fn hostile_output() -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(prop_oneof![Just(f32::MAX), Just(-f32::MAX), -10.0f32..10.0, -1.0e38f32..1.0e38], 1..12)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..4, prop::collection::vec(prop_oneof![0u32..9, any::<u32>()], 0..10), hostile_time(), hostile_time(), any::<bool>(), prop_oneof![0u32..10, any::<u32>()], prop_oneof![0u32..5, any::<u32>()])
            .prop_map(|(group, indexes, deadline, hard, has_parity, k, parities)| Op::Manifest { group, indexes, deadline, hard, has_parity, k, parities }),
        (0u8..4, prop_oneof![0u32..9, any::<u32>()], hostile_output(), hostile_time(), hostile_time())
            .prop_map(|(group, index, output, deadline, hard)| Op::Prediction { group, index, output, deadline, hard }),
        (0u8..4, prop_oneof![0u32..4, any::<u32>()], prop_oneof![0u32..9, any::<u32>()], hostile_output(), hostile_time())
            .prop_map(|(group, index, members, output, hard)| Op::Parity { group, index, members, output, hard }),
        hostile_time().prop_map(Op::Tick),
        (0i32..3).prop_map(Op::Forget),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(3000)))]

    /// Fuzzing the join with what a hostile internal record could carry: it never panics,
    /// an UNAVAILABLE answer carries no output and any other answer one, and no offset is
    /// ever committable past what was read.
    #[test]
    fn hostile_inputs_never_panic_and_answers_stay_well_formed(ops in prop::collection::vec(op(), 1..40), policy in prop_oneof![Just(Policy::Eager), Just(Policy::Deadline)]) {
        let mut j: Join = Join::new(JoinConfig { policy, lag_awareness: true, late_linger_ms: 100, max_groups: 1000 });
        let mut now = 0u64;
        for (n, op) in ops.into_iter().enumerate() {
            let o = |topic: u8, partition: i32| Origin { topic, partition, offset: n as i64 };
            match op {
                Op::Manifest { group, indexes, deadline, hard, has_parity, k, parities } => {
                    let members = indexes.iter().map(|&index| MemberSpec { query_id: format!("q{index}"), index, model_partition: (index % 3) as i32, deadline_at: deadline, hard_deadline_at: hard, meta: () }).collect();
                    j.on_manifest(GroupSpec { group_id: format!("g{group}"), members, has_parity, k, parities }, o(0, i32::from(group % 2)), now);
                }
                Op::Prediction { group, index, output, deadline, hard } => {
                    let a = Arrival { query_id: format!("q{index}"), index, model_partition: (index % 3) as i32, output, deadline_at: deadline, hard_deadline_at: hard, meta: () };
                    j.on_prediction(&format!("g{group}"), a, o(1, i32::from(group % 2)), now);
                }
                Op::Parity { group, index, members, output, hard } => j.on_parity(&format!("g{group}"), index, members, output, hard, o(2, i32::from(group % 2)), now),
                Op::Tick(t) => {
                    now = now.max(t.min(u64::MAX / 2));
                    j.handle_timeout(now);
                }
                Op::Forget(p) => j.forget_partition(p, &[0, 1, 2]),
            }
            while let Some(e) = j.poll_event() {
                if let Event::Result(r) = e {
                    prop_assert_eq!(r.source == Source::Unavailable, r.output.is_empty(), "{:?}", r);
                }
            }
            for (_, _, next) in j.committable() {
                prop_assert!(next <= n as i64 + 1);
            }
        }
    }
}

#[test]
fn past_max_groups_the_group_due_first_is_settled_early_and_forgotten() {
    let mut j = Join::new(JoinConfig { max_groups: 2, ..config(Policy::Deadline, true) });
    for (n, hard) in [(0u64, 100u64), (1, 300), (2, 200)] {
        let mut s = spec(2, hard / 2, hard);
        s.group_id = format!("g{n}");
        for m in &mut s.members {
            m.query_id = format!("g{n}-q{}", m.index);
        }
        j.on_manifest(s, origin(0, n as i64), n);
    }
    // g0 came first and is due first: settled, both members UNAVAILABLE (no inputs yet).
    let mut evicted = Vec::new();
    let mut answered = Vec::new();
    while let Some(e) = j.poll_event() {
        match e {
            Event::Evicted { group_id } => evicted.push(group_id),
            Event::Result(r) => answered.push((r.query_id, r.source)),
            _ => {}
        }
    }
    assert_eq!(evicted, vec!["g0".to_string()]);
    assert_eq!(answered, vec![("g0-q0".to_string(), Source::Unavailable), ("g0-q1".to_string(), Source::Unavailable)]);
    assert_eq!(j.len(), 2);
    // Its offset is released: nothing it held blocks commits.
    assert_eq!(j.committable(), vec![(0, 0, 1)]);
}

/// An encoder killed just after it closed a partial group (one member, by its linger)
/// replays its input and closes the same group again, now with a second query that came
/// meanwhile. The group was finished; the new member is a query of its own and gets its
/// answer, whether its prediction comes after the second manifest or before it, and the
/// first member is not answered again. (Found by the fault benchmark: the second member
/// was dropped as a duplicate.)
#[test]
fn a_replayed_manifest_with_a_new_member_of_a_finished_group_answers_it_once() {
    for prediction_first in [false, true] {
        let mut j = Join::new(config(Policy::Deadline, true));
        let mut partial = spec(2, 50, 100);
        partial.members.truncate(1);
        j.on_manifest(partial, origin(0, 0), 0);
        j.on_prediction("g", arr(0, vec![1.0, 0.0], 100), origin(1, 0), 1);
        j.on_parity("g", 0, 1, vec![1.0, 0.0], 100, origin(2, 0), 2);
        assert_eq!(results(&mut j).len(), 1);
        assert_eq!(j.open_groups(), 0, "finished");
        if prediction_first {
            j.on_prediction("g", arr(1, vec![0.0, 1.0], 100), origin(1, 1), 10);
            j.on_manifest(spec(2, 50, 100), origin(0, 1), 11);
        } else {
            j.on_manifest(spec(2, 50, 100), origin(0, 1), 10);
            j.on_prediction("g", arr(1, vec![0.0, 1.0], 100), origin(1, 1), 11);
        }
        // Replayed duplicates of the first member change nothing.
        j.on_prediction("g", arr(0, vec![1.0, 0.0], 100), origin(1, 2), 12);
        j.handle_timeout(200);
        let r = results(&mut j);
        assert_eq!(r.iter().map(|e| (e.query_id.as_str(), e.source)).collect::<Vec<_>>(), vec![("q1", Source::Model)], "prediction first: {prediction_first}");
    }
}

#[test]
fn a_prediction_before_a_manifest_that_does_not_list_it_is_claimed_by_a_regrouped_one() {
    // Found by the decoder's intake property test: q1's prediction came first (answered on
    // arrival), then a manifest closing {q0} alone, then a replay's manifest listing q1.
    // The first manifest dropped q1's prediction and the second answered q1 again at its
    // hard deadline.
    let mut j = Join::new(config(Policy::Deadline, false));
    j.on_prediction("g", arr(1, vec![0.0, 1.0], 100), origin(1, 0), 0);
    let mut only_q0 = spec(2, 50, 100);
    only_q0.members.truncate(1);
    j.on_manifest(only_q0, origin(0, 0), 1);
    let mut only_q1 = spec(2, 50, 100);
    only_q1.members.remove(0);
    j.on_manifest(only_q1, origin(0, 1), 2);
    j.handle_timeout(200);
    let answered: Vec<_> = results(&mut j).into_iter().map(|e| (e.query_id, e.source)).collect();
    assert_eq!(answered, vec![("q1".to_string(), Source::Model), ("q0".to_string(), Source::Unavailable)]);
}

#[test]
fn a_prediction_after_a_manifest_that_does_not_list_it_is_answered_and_claimed_once() {
    // The same regrouping with q1's prediction after the first manifest: it was ignored
    // there, and the regrouped manifest then answered q1 UNAVAILABLE though its real
    // prediction had come.
    let mut j = Join::new(config(Policy::Deadline, false));
    let mut only_q0 = spec(2, 50, 100);
    only_q0.members.truncate(1);
    j.on_manifest(only_q0, origin(0, 0), 0);
    j.on_prediction("g", arr(1, vec![0.0, 1.0], 100), origin(1, 0), 1);
    j.on_prediction("g", arr(1, vec![0.0, 1.0], 100), origin(1, 1), 2);
    let mut only_q1 = spec(2, 50, 100);
    only_q1.members.remove(0);
    j.on_manifest(only_q1, origin(0, 1), 3);
    j.handle_timeout(200);
    let answered: Vec<_> = results(&mut j).into_iter().map(|e| (e.query_id, e.source)).collect();
    assert_eq!(answered, vec![("q1".to_string(), Source::Model), ("q0".to_string(), Source::Unavailable)]);
}
