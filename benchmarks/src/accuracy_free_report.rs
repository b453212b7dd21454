//! The training-free section of `accuracy.md` ([`crate::accuracy_free`]): Berrut-coded
//! inference beside ApproxIFER's published figures, F as its own parity model beside the
//! learned parity model of the same encoder and k, and the approximate backup.

use crate::accuracy_free::{BerrutResult, TrainingFree};
use crate::accuracy_report::{pct, spread, ParityResult};
use std::collections::BTreeSet;

/// The Markdown section; empty when nothing training-free was measured.
pub fn markdown(free: &TrainingFree, learned: &[ParityResult]) -> String {
    let mut s = String::new();
    if free.berrut.is_empty() && free.self_parity.is_empty() && free.backup.is_empty() {
        return s;
    }
    s.push_str("\n## Training-free alternatives (no parity model trained)\n\nSame test sets and groupings as above. Percent.\n");
    if !free.berrut.is_empty() {
        berrut(&mut s, &free.berrut);
    }
    if !free.self_parity.is_empty() {
        s.push_str(
            "\n### F as its own parity model\n\nThe parity query is the group's encoding (addition: Σ Xi; concatenation: the \
             tiles), F itself answers it, and each member is erased in turn and decoded as F(P) − Σ_{i≠j} F(Xi) \
             (`parm_core::reconstruct`). *Learned Fp*: the reconstruction top-1 of the trained parity model of the same \
             encoder and k (the table above), where there is one.\n\n",
        );
        s.push_str("| data set | F | encoder | k | reconstructions | reconstruction top-1 | range over groupings | agreement with F | F top-1 (same examples) | learned Fp |\n");
        s.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
        for r in &free.self_parity {
            let suffix = format!("-k{}", r.k);
            let fp = learned.iter().find(|p| p.base == r.base && p.encoder == r.encoder && p.k == r.k && p.name.ends_with(&suffix));
            s.push_str(&format!(
                "| {} | `{}` | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                r.dataset,
                r.base,
                r.encoder,
                r.k,
                r.decoded.total,
                pct(r.decoded.top1()),
                spread(&r.top1_per_grouping),
                pct(r.decoded.agreement()),
                pct(r.decoded.base_top1()),
                fp.map_or("—".to_string(), |p| format!("{} (`{}`)", pct(p.reconstruction_top1), p.name))
            ));
        }
    }
    if !free.backup.is_empty() {
        s.push_str(
            "\n### Approximate backup\n\nA cheaper model answers for F when F is late. It answers each query on its own, so \
             this depends on no k and no grouping: one pass over the test set.\n\n",
        );
        s.push_str("| data set | F | backup | examples | backup top-1 | agreement with F's top-1 | F top-1 |\n|---|---|---|---|---|---|---|\n");
        for b in &free.backup {
            s.push_str(&format!(
                "| {} | `{}` | `{}` | {} | {} | {} | {} |\n",
                b.dataset,
                b.base,
                b.backup,
                b.test_examples,
                pct(b.backup_top1),
                pct(b.agreement_with_base),
                pct(b.base_top1)
            ));
        }
    }
    s
}

fn berrut(s: &mut String, rows: &[BerrutResult]) {
    s.push_str(
        "\n### Berrut-coded inference (ApproxIFER)\n\nK queries of a group become N = K + S coded queries by Berrut's \
         rational interpolant through α_j = cos((2j+1)π/(2K)), evaluated at β_i (the formula in the table; cos(iπ/N) is \
         ApproxIFER's accuracy script, cos(iπ/(N−1)) the Chebyshev points of the second kind); F answers each, and all K \
         outputs are approximated by interpolating the answers back to the α_j (`src/accuracy_berrut.rs`). *No straggler*: \
         from all N answers (Berrut outputs are approximate even then). *S missing*: from N − S answers, for every one of \
         the C(N, S) sets of missing workers; every output of the group is scored each time. *Range*: of the S-missing \
         top-1 over the groupings. *Published*: ApproxIFER's chart (AAAI 2022, public repository \
         `Mahdi-Soleymani/Approxifer`, `Bar_plots.py`; their F is a ResNet-18, base 99 / 97), Berrut (ParM in the same \
         chart).\n\n",
    );
    s.push_str("| data set | F | K | S | N | β points | no straggler: top-1 | agreement with F | S missing: top-1 | range over groupings | agreement with F | F top-1 (same examples) | published: Berrut (ParM) |\n");
    s.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        let published = r.published.map_or("—".to_string(), |p| match p.parm {
            Some(parm) => format!("{:.1} ({parm:.1})", p.approxifer),
            None => format!("{:.1}", p.approxifer),
        });
        s.push_str(&format!(
            "| {} | `{}` | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.dataset,
            r.base,
            r.k,
            r.s,
            r.n,
            r.points,
            pct(r.no_straggler.top1()),
            pct(r.no_straggler.agreement()),
            pct(r.stragglers.top1()),
            spread(&r.stragglers_top1_per_grouping),
            pct(r.stragglers.agreement()),
            pct(r.stragglers.base_top1()),
            published
        ));
    }
    let not_in_graph: BTreeSet<String> = rows.iter().filter(|r| r.normalization_in_graph != Some(true)).map(|r| format!("`{}`", r.base)).collect();
    if not_in_graph.is_empty() {
        s.push_str("\nEvery F here normalizes its input inside its graph (`normalization.in_graph`), so coded queries, combinations of raw pixels, are normalized as F expects.\n");
    } else {
        s.push_str(&format!(
            "\n**Not known to normalize in its graph** (`normalization.in_graph` false or missing): {}; their coded queries are combinations of raw pixels.\n",
            not_in_graph.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
}
