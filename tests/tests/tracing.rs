//! One trace per sequence across processes: a scheduler and a worker export spans over
//! OTLP/gRPC to a receiver in this test, and the spans of a rendered sequence form one trace
//! under the caller's `TRACEPARENT`: sequence → plan, place, render (download, denoise,
//! decode, encode, upload) and stitch.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, bail};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use reelfarm_tests::cluster::{Timings, free_port, reelfarm_binary};
use reelfarm_tests::farm::Farm;
use tonic::{Request, Response, Status};

/// A span as received: (trace id, span id, parent span id, name), ids in hex.
#[derive(Debug, Clone)]
struct ReceivedSpan {
    trace_id: String,
    span_id: String,
    parent: String,
    name: String,
}

/// The receiving end of OTLP/gRPC: keeps every span and counts metric batches.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    metric_batches: Arc<Mutex<usize>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                for span in scope.spans {
                    spans.push(ReceivedSpan {
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent: hex(&span.parent_span_id),
                        name: span.name,
                    });
                }
            }
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        _request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        *self.metric_batches.lock().unwrap() += 1;
        Ok(Response::new(ExportMetricsServiceResponse::default()))
    }
}

const PARENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequence_is_one_trace_across_scheduler_and_worker() {
    let collector = Collector::default();
    let address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let server = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(collector.clone()))
        .add_service(MetricsServiceServer::new(collector.clone()))
        .serve(address);
    tokio::spawn(server);

    let farm = Farm::start(Timings::default()).expect("etcd and S3 start");
    let spans = collector.spans.clone();
    let metric_batches = collector.metric_batches.clone();
    farm.check(async |farm| {
        farm.cluster.extra_args = vec!["--otlp-endpoint".into(), format!("http://{address}")];
        farm.cluster.start_scheduler()?;
        farm.cluster.start_worker("traced", "1x80GiB:H100")?;
        let spec = farm.dir.path().join("traced.yaml");
        std::fs::write(
            &spec,
            "title: traced\nfps: 8\nsteps: 2\nshots:\n  - prompt: a harbour at dawn\n    duration: 3\n  - prompt: the boats leave\n    duration: 3\n    transition: continue\n  - prompt: a lighthouse at dusk\n    duration: 3\n",
        )?;
        let output = std::process::Command::new(reelfarm_binary())
            .args(["submit", "--watch", "--quiet", spec.to_str().unwrap()])
            .env("REELFARM_SCHEDULER", farm.cluster.scheduler_list())
            .env("TRACEPARENT", format!("00-{PARENT_TRACE}-{PARENT_SPAN}-01"))
            .output()?;
        if !output.status.success() {
            bail!("submit: {}", String::from_utf8_lossy(&output.stderr));
        }
        // A graceful stop flushes buffered spans and metrics.
        for process in farm.cluster.workers.iter_mut() {
            process.terminate(Duration::from_secs(20))?;
        }
        for (_, process) in farm.cluster.schedulers.iter_mut() {
            process.terminate(Duration::from_secs(20))?;
        }

        let spans = spans.lock().unwrap().clone();
        let ours: Vec<&ReceivedSpan> =
            spans.iter().filter(|span| span.trace_id == PARENT_TRACE).collect();
        if ours.len() != spans.len() {
            bail!("spans outside the caller's trace: {spans:#?}");
        }
        let names: HashSet<&str> = ours.iter().map(|span| span.name.as_str()).collect();
        for expected in [
            "sequence", "plan", "place", "render", "download", "denoise", "decode", "encode",
            "upload", "stitch", "decode, grade and encode",
        ] {
            if !names.contains(expected) {
                bail!("no {expected:?} span among {names:?}");
            }
        }
        let by_id: HashMap<&str, &ReceivedSpan> =
            ours.iter().map(|span| (span.span_id.as_str(), *span)).collect();
        let parent_name = |span: &ReceivedSpan| {
            by_id
                .get(span.parent.as_str())
                .map_or("(missing)", |parent| parent.name.as_str())
        };
        let sequence: Vec<_> = ours.iter().filter(|s| s.name == "sequence").collect();
        if sequence.len() != 1 || sequence[0].parent != PARENT_SPAN {
            bail!("one sequence span under the caller's span expected: {sequence:#?}");
        }
        for span in &ours {
            let expected_parent = match span.name.as_str() {
                "sequence" => continue,
                "plan" | "place" | "render" | "stitch" => "sequence",
                "decode, grade and encode" => "stitch",
                "download" | "upload" => {
                    let parent = parent_name(span);
                    if parent != "render" && parent != "stitch" {
                        bail!("{} under {parent}", span.name);
                    }
                    continue;
                }
                _ => "render",
            };
            if parent_name(span) != expected_parent {
                bail!("{} under {} (expected {expected_parent})", span.name, parent_name(span));
            }
        }
        let renders = ours.iter().filter(|s| s.name == "render").count();
        let places = ours.iter().filter(|s| s.name == "place").count();
        if renders != 3 || places != 4 {
            bail!("expected 3 renders and 4 placements (3 segments and the stitch): {renders}, {places}");
        }
        let batches = *metric_batches.lock().unwrap();
        if batches == 0 {
            bail!("no OTLP metrics arrived");
        }
        eprintln!("{} spans in one trace; {batches} OTLP metric batches", ours.len());
        Ok(())
    })
    .await;
}
