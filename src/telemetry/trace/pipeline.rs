//! The export pipeline: tracer provider, batch processor and OTLP exporter, behind one
//! replaceable slot so the request path reads it without a lock and a reload can swap it.
//!
//! Threads: the SDK's `BatchSpanProcessor` runs its own thread and drives the exporter with a
//! blocking executor. Both OTLP transports here are async and need a tokio reactor (tonic's
//! channel spawns its connection task at build time; the HTTP exporter uses async reqwest), so
//! every export is handed to a small runtime this module owns. Nothing depends on the caller's
//! runtime: `init` and `shutdown` work from any thread, inside a runtime or not, and no pingora
//! runtime can be shut down under the exporter.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::InstrumentationScope;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, SpanData,
    SpanExporter,
};
use opentelemetry_sdk::Resource;

use super::error::PipelineError;
use super::settings::{ExportSettings, Protocol, RootSampler, TracingSettings};

/// The running pipeline, `None` while tracing is off.
static ACTIVE: ArcSwapOption<Pipeline> = ArcSwapOption::const_empty();

/// How long `shutdown` waits for the last batch. Bounded so a dead collector can't hold up a
/// process that is stopping; what is not sent by then is lost.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// Added to the exporter's own deadline before an export is abandoned, in case a transport
/// ignores it; a stuck export would otherwise stall every later batch.
const EXPORT_GRACE: Duration = Duration::from_secs(1);

struct Pipeline {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    runtime: ExportRuntime,
}

/// Starts the exporter, replacing (and flushing, in the background) the one running before;
/// settings with tracing off stop it. On error the previous exporter keeps running. Returns
/// without waiting for the network; callable from any thread, inside a runtime or not, and
/// again on reload.
pub fn init(settings: &TracingSettings) -> Result<(), PipelineError> {
    let next = match &settings.export {
        Some(export) => Some(Arc::new(Pipeline::start(export)?)),
        None => None,
    };
    if let Some(previous) = ACTIVE.swap(next) {
        retire_in_background(previous);
    }
    Ok(())
}

/// Flushes and stops the exporter (on shutdown). Blocks for at most about five seconds; spans
/// finished after it are dropped.
pub fn shutdown() {
    if let Some(previous) = ACTIVE.swap(None) {
        previous.stop();
    }
}

/// Sends every finished span now and waits for the collector's answer (about five seconds at
/// most). For tests and one-shot tools; the gateway itself never needs it.
pub fn force_flush() -> Result<(), PipelineError> {
    match ACTIVE.load_full() {
        Some(pipeline) => pipeline
            .provider
            .force_flush()
            .map_err(PipelineError::Flush),
        None => Ok(()),
    }
}

/// The tracer of the running pipeline; `None` while tracing is off.
pub(super) fn tracer() -> Option<SdkTracer> {
    ACTIVE.load().as_ref().map(|p| p.tracer.clone())
}

/// Stops a replaced pipeline off the caller's thread: its last flush may take seconds and the
/// caller may be a reload on an async task.
fn retire_in_background(pipeline: Arc<Pipeline>) {
    let retiring = Arc::clone(&pipeline);
    let spawned = std::thread::Builder::new()
        .name("tollgate-otlp-retire".into())
        .spawn(move || retiring.stop());
    if spawned.is_err() {
        pipeline.stop();
    }
}

impl Pipeline {
    fn start(s: &ExportSettings) -> Result<Self, PipelineError> {
        let runtime = ExportRuntime::new()?;
        let mut exporter = {
            // tonic's lazy channel spawns its connection task on the current runtime, which
            // must be ours so that it outlives whatever runtime called `init`.
            let _entered = runtime.handle.enter();
            build_exporter(s)?
        };
        let resource = Resource::builder()
            .with_service_name(s.service_name.clone())
            .with_attribute(opentelemetry::KeyValue::new(
                opentelemetry_semantic_conventions::resource::SERVICE_VERSION,
                env!("CARGO_PKG_VERSION"),
            ))
            .build();
        exporter.set_resource(&resource);
        let exporter = OnRuntime {
            inner: Arc::new(exporter),
            handle: runtime.handle.clone(),
            deadline: s.timeout + EXPORT_GRACE,
        };
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_max_queue_size(s.max_queue_size)
                    .with_max_export_batch_size(s.max_export_batch_size)
                    .with_scheduled_delay(s.scheduled_delay)
                    .build(),
            )
            .build();
        let root = match s.sampler.root {
            RootSampler::AlwaysOn => Sampler::AlwaysOn,
            RootSampler::AlwaysOff => Sampler::AlwaysOff,
            RootSampler::Ratio(r) => Sampler::TraceIdRatioBased(r),
        };
        let sampler = if s.sampler.parent_based {
            Sampler::ParentBased(Box::new(root))
        } else {
            root
        };
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(sampler)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer_with_scope(
            InstrumentationScope::builder("tollgate")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        );
        Ok(Pipeline {
            provider,
            tracer,
            runtime,
        })
    }

    /// Flushes what is queued, then stops the runtime. Shutting the provider down explicitly
    /// also matters for later: spans still open keep the provider alive, and a provider that
    /// was never shut down flushes from the `Drop` of the last one — on a request thread.
    fn stop(&self) {
        if let Err(e) = self.provider.shutdown_with_timeout(SHUTDOWN_WAIT) {
            if !matches!(e, OTelSdkError::AlreadyShutdown) {
                tracing::warn!(error = %e, "trace exporter did not flush cleanly");
            }
        }
        self.runtime.stop();
    }
}

fn build_exporter(s: &ExportSettings) -> Result<opentelemetry_otlp::SpanExporter, PipelineError> {
    let built = match s.protocol {
        Protocol::Grpc => {
            let mut headers = http::HeaderMap::new();
            for (name, value) in &s.headers {
                // Names and values were checked by validate(); one that fails here anyway is
                // left out rather than failing the whole exporter.
                if let (Ok(k), Ok(mut v)) = (
                    http::HeaderName::from_bytes(name.as_bytes()),
                    http::HeaderValue::from_str(value.expose()),
                ) {
                    v.set_sensitive(true);
                    headers.insert(k, v);
                }
            }
            let metadata =
                opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(headers);
            let mut builder = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_protocol(opentelemetry_otlp::Protocol::Grpc)
                .with_endpoint(s.endpoint.clone())
                .with_timeout(s.timeout)
                .with_metadata(metadata);
            if s.endpoint.starts_with("https://") {
                builder = builder.with_tls_config(
                    opentelemetry_otlp::tonic_types::transport::ClientTlsConfig::new()
                        .with_native_roots(),
                );
            }
            builder.build()
        }
        Protocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(s.endpoint.clone())
            .with_timeout(s.timeout)
            .with_headers(
                s.headers
                    .iter()
                    .map(|(k, v)| (k.clone(), v.expose().clone()))
                    .collect(),
            )
            .build(),
    };
    built.map_err(|error| PipelineError::Exporter {
        endpoint: s.endpoint.clone(),
        error,
    })
}

/// A tokio runtime with one worker that runs the exports, shut down without blocking so that
/// stopping it is safe from inside another runtime.
struct ExportRuntime {
    handle: tokio::runtime::Handle,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
}

impl ExportRuntime {
    fn new() -> Result<Self, PipelineError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(2)
            .thread_name("tollgate-otlp")
            .enable_all()
            .build()
            .map_err(PipelineError::Runtime)?;
        Ok(ExportRuntime {
            handle: runtime.handle().clone(),
            runtime: Mutex::new(Some(runtime)),
        })
    }

    fn stop(&self) {
        let taken = match self.runtime.lock() {
            Ok(mut slot) => slot.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(runtime) = taken {
            // A plain drop blocks, and panics when the caller is itself on a runtime.
            runtime.shutdown_background();
        }
    }
}

impl Drop for ExportRuntime {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs the wrapped exporter's exports on the pipeline's runtime; the batch processor's thread
/// only waits for the result.
#[derive(Debug)]
struct OnRuntime {
    inner: Arc<opentelemetry_otlp::SpanExporter>,
    handle: tokio::runtime::Handle,
    deadline: Duration,
}

impl SpanExporter for OnRuntime {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let inner = Arc::clone(&self.inner);
        let deadline = self.deadline;
        let task = self.handle.spawn(async move {
            tokio::time::timeout(deadline, inner.export(batch))
                .await
                .unwrap_or(Err(OTelSdkError::Timeout(deadline)))
        });
        async move {
            task.await.unwrap_or_else(|e| {
                Err(OTelSdkError::InternalFailure(format!(
                    "trace export task ended: {e}"
                )))
            })
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        // The resource was already given to the exporter before it was wrapped; this only
        // matters if the SDK ever sets another one, and then no export holds a clone.
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
    }
}
