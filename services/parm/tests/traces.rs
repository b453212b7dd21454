//! The trace structure: the services run in this process (so spans land in an in-memory
//! exporter) against the real broker. One query is one trace from the client's send to its
//! result; the parity query links to its members; a reconstructed result links to the
//! parity prediction it was decoded from.

mod support;

use clap::Parser;
use opentelemetry::global;
use opentelemetry::trace::TraceId;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use parm::launch::groups_ready;
use parm_common::kafka::{create_topics, TopicLayout};
use parm_common::records::ResultSource;
use parm_common::shutdown;
use parm_worker::Role;
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// The encoder's flags, parsed the way `parm encoder` parses them.
#[derive(Parser)]
struct Encoder {
    #[command(flatten)]
    a: parm_encoder::EncoderArgs,
}
/// A worker's flags, parsed the way `parm model-worker` parses them.
#[derive(Parser)]
struct Worker {
    #[command(flatten)]
    a: parm_worker::WorkerArgs,
}
/// The decoder's flags, parsed the way `parm decoder` parses them.
#[derive(Parser)]
struct Decoder {
    #[command(flatten)]
    a: parm_decoder::DecoderArgs,
}

fn trace_of(tp: &str) -> TraceId {
    TraceId::from_hex(tp.split('-').nth(1).expect("traceparent has a trace id")).expect("hex trace id")
}

fn names_in(spans: &[SpanData], trace: TraceId) -> HashSet<String> {
    spans.iter().filter(|s| s.span_context.trace_id() == trace).map(|s| s.name.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_query_is_one_trace_and_a_reconstruction_links_the_parity_span() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
    global::set_tracer_provider(provider.clone());
    global::set_text_map_propagator(TraceContextPropagator::new());

    let kafka = support::kafka_for("traces");
    let layout = TopicLayout { query_partitions: 1, model_partitions: 2, parity_partitions: 1, decoder_partitions: 1 };
    create_topics(&kafka, &layout).await.unwrap();
    let base = ["x", "--brokers", &kafka.brokers, "--topic-prefix", &kafka.topic_prefix];
    let with = |extra: &[&str]| base.iter().chain(extra).map(|s| s.to_string()).collect::<Vec<_>>();
    let (trigger, stop) = shutdown::channel();
    let mut tasks = Vec::new();
    // A long linger puts both queries in one group; worker 1 is far slower than the deadline.
    let enc = Encoder::parse_from(with(&["--linger-ms", "300", "--deadline-ms", "300"])).a;
    tasks.push(tokio::spawn(parm_encoder::run(enc, stop.clone())));
    for extra in [&["--worker-id", "fast"][..], &["--worker-id", "slow", "--delay-fixed-ms", "5000"][..]] {
        let w = Worker::parse_from(with(extra)).a;
        tasks.push(tokio::spawn(parm_worker::run(w, Role::Model, stop.clone())));
    }
    tasks.push(tokio::spawn(parm_worker::run(Worker::parse_from(with(&[])).a, Role::Parity, stop.clone())));
    tasks.push(tokio::spawn(parm_decoder::run(Decoder::parse_from(with(&[])).a, stop.clone())));

    let me = format!("parm-{}", std::process::id());
    let p = &kafka.topic_prefix;
    let groups = vec![
        (format!("{p}-encoder"), vec![me.clone()]),
        (format!("{p}-model-workers"), vec![me.clone(), me.clone()]),
        (format!("{p}-parity-workers"), vec![me.clone()]),
        (format!("{p}-decoder"), vec![me.clone()]),
    ];
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let brokers = kafka.brokers.clone();
        let g = groups.clone();
        let not_ready = tokio::task::spawn_blocking(move || groups_ready(&brokers, &g)).await.unwrap().unwrap();
        if not_ready.is_empty() {
            break;
        }
        assert!(Instant::now() < until, "services not ready: {not_ready:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let client = parm::client::Client::connect(&kafka).unwrap();
    let data = support::mnist();
    let tp_a = client.send("trace-a", &data.images[0], None).await.unwrap().expect("client span");
    let tp_b = client.send("trace-b", &data.images[1], None).await.unwrap().expect("client span");
    let expected: HashSet<String> = ["trace-a".to_string(), "trace-b".to_string()].into();
    let results = client.collect(&expected, Duration::from_secs(30)).await.unwrap();
    trigger.trigger();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(15), t).await;
    }
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();

    let by_id = |id: &str| results.iter().find(|r| r.result.query_id == id).unwrap_or_else(|| panic!("no result for {id}"));
    let (model, recon, model_tp, recon_tp) = if by_id("trace-a").result.source == ResultSource::Model {
        (by_id("trace-a"), by_id("trace-b"), &tp_a, &tp_b)
    } else {
        (by_id("trace-b"), by_id("trace-a"), &tp_b, &tp_a)
    };
    assert_eq!(model.result.source, ResultSource::Model);
    assert_eq!(recon.result.source, ResultSource::Reconstructed);
    let t = kafka.topics();

    // The answered-by-the-model query: client → encoder → worker → decoder, one trace.
    let trace = trace_of(model_tp);
    assert_eq!(trace_of(model.traceparent.as_deref().expect("result carries traceparent")), trace, "the result continues the query's trace");
    let names = names_in(&spans, trace);
    for want in [
        format!("send {}", t.queries),
        format!("process {}", t.queries),
        format!("send {}", t.model_queries),
        format!("process {}", t.model_queries),
        format!("send {}", t.predictions),
        format!("process {}", t.predictions),
        format!("send {}", t.results),
    ] {
        assert!(names.contains(&want), "trace of the MODEL result lacks '{want}': {names:?}");
    }
    let services: HashSet<String> = spans
        .iter()
        .filter(|s| s.span_context.trace_id() == trace)
        .flat_map(|s| s.attributes.iter().filter(|kv| kv.key.as_str() == "parm.service").map(|kv| kv.value.to_string()))
        .collect();
    for s in ["client", "encoder", "model-worker", "decoder"] {
        assert!(services.contains(s), "no {s} span in the trace: {services:?}");
    }

    // The reconstructed query: its result sits in its own trace and links the parity span.
    let trace = trace_of(recon_tp);
    let result_span = spans
        .iter()
        .find(|s| s.span_context.trace_id() == trace && s.name == format!("send {}", t.results))
        .expect("the reconstructed result's send span is in the query's trace");
    let parity_process: Vec<&SpanData> = spans.iter().filter(|s| s.name == format!("process {}", t.parity_predictions)).collect();
    assert!(!parity_process.is_empty(), "the decoder traced the parity prediction");
    let linked: HashSet<_> = result_span.links.links.iter().map(|l| l.span_context.span_id()).collect();
    assert!(
        parity_process.iter().any(|p| linked.contains(&p.span_context.span_id())),
        "the reconstruction links the parity prediction's span"
    );
    // The parity query links to the encoder's spans of both members.
    let parity_send = spans.iter().find(|s| s.name == format!("send {}", t.parity_queries)).expect("parity send span");
    let member_traces: HashSet<TraceId> = parity_send.links.links.iter().map(|l| l.span_context.trace_id()).collect();
    assert!(member_traces.contains(&trace_of(&tp_a)) && member_traces.contains(&trace_of(&tp_b)), "parity links both members");
}
