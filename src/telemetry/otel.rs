//! OpenTelemetry trace export over OTLP, configured by the standard `OTEL_*`
//! variables and switched on by `OTEL_EXPORTER_OTLP_ENDPOINT` (or its
//! traces-only form).

use opentelemetry::KeyValue;
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;

/// The service name reported when `OTEL_SERVICE_NAME` does not set one.
const DEFAULT_SERVICE_NAME: &str = "chat-relay";

/// What the environment asks for.
#[derive(Debug, PartialEq, Eq)]
enum ExportRequest {
    /// No export: no endpoint, `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`.
    Off,
    /// OTLP over HTTP, in this encoding: protobuf unless the protocol
    /// variable says `http/json`. Always set on the exporter: left to the
    /// SDK, the default would follow its cargo features (JSON here, since
    /// both encodings are built), not the standard's protobuf.
    OtlpHttp(Protocol),
}

/// Reads the `OTEL_*` variables that decide whether and how to export.
fn export_request(var: impl Fn(&str) -> Option<String>) -> Result<ExportRequest, String> {
    if var("OTEL_SDK_DISABLED").is_some_and(|value| value.trim().eq_ignore_ascii_case("true")) {
        return Ok(ExportRequest::Off);
    }
    match var("OTEL_TRACES_EXPORTER").as_deref().map(str::trim) {
        None | Some("" | "otlp") => {}
        Some("none") => return Ok(ExportRequest::Off),
        Some(other) => {
            return Err(format!(
                "OTEL_TRACES_EXPORTER={other} is not supported; use otlp (the default) or none"
            ));
        }
    }
    let endpoints: Vec<(&str, String)> = ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"]
        .into_iter()
        .filter_map(|name| var(name).map(|value| (name, value.trim().to_owned())))
        .filter(|(_, value)| !value.is_empty())
        .collect();
    let Some((name, endpoint)) = endpoints.first() else {
        return Ok(ExportRequest::Off);
    };
    // Spans go to a collector beside the node (a sidecar or agent), which
    // forwards them over TLS: no TLS stack in the node for this.
    if !endpoint.starts_with("http://") {
        return Err(format!(
            "{name}={endpoint} is not supported; give the http:// address of a local OpenTelemetry \
             collector (a sidecar, usually http://127.0.0.1:4318), which forwards over TLS"
        ));
    }
    let protocol = var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"));
    match protocol.as_deref().map(str::trim) {
        None | Some("" | "http/protobuf") => Ok(ExportRequest::OtlpHttp(Protocol::HttpBinary)),
        Some("http/json") => Ok(ExportRequest::OtlpHttp(Protocol::HttpJson)),
        Some("grpc") => Err("OTEL_EXPORTER_OTLP_PROTOCOL=grpc is not supported; use http/protobuf \
                             (the default) and the collector's OTLP/HTTP port, usually 4318"
            .to_owned()),
        Some(other) => Err(format!(
            "OTEL_EXPORTER_OTLP_PROTOCOL={other} is not a known protocol; use http/protobuf or http/json"
        )),
    }
}

/// Builds the tracer provider the environment asks for, or `None` when
/// export is off. The exporter sends batches from its own thread.
///
/// # Errors
/// One line naming the `OTEL_*` variable that cannot be honoured.
pub fn tracer_provider(node_id: &str) -> Result<Option<SdkTracerProvider>, String> {
    let ExportRequest::OtlpHttp(protocol) = export_request(|name| std::env::var(name).ok())? else {
        return Ok(None);
    };
    let exporter = SpanExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .build()
        .map_err(|error| format!("OTEL_EXPORTER_OTLP_ENDPOINT: cannot build the OTLP exporter: {error}"))?;
    // The SDK's resource reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES.
    let mut resource = Resource::builder().with_attribute(KeyValue::new("service.instance.id", node_id.to_owned()));
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(DEFAULT_SERVICE_NAME);
    }
    // Exporter endpoint, headers, timeout and the batch and sampler settings
    // (OTEL_BSP_*, OTEL_TRACES_SAMPLER*) come from the environment.
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(vars: &[(&str, &str)]) -> Result<ExportRequest, String> {
        export_request(|name| {
            vars.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value).to_owned())
        })
    }

    #[test]
    fn export_is_on_only_with_an_endpoint_and_off_when_disabled() {
        assert_eq!(request(&[]), Ok(ExportRequest::Off));
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318");
        assert_eq!(
            request(&[endpoint]),
            Ok(ExportRequest::OtlpHttp(Protocol::HttpBinary)),
            "protobuf, the standard's default"
        );
        assert_eq!(
            request(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:4318/v1/traces")]),
            Ok(ExportRequest::OtlpHttp(Protocol::HttpBinary))
        );
        assert_eq!(
            request(&[endpoint, ("OTEL_SDK_DISABLED", "true")]),
            Ok(ExportRequest::Off)
        );
        assert_eq!(
            request(&[endpoint, ("OTEL_TRACES_EXPORTER", "none")]),
            Ok(ExportRequest::Off)
        );
        assert_eq!(
            request(&[endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]),
            Ok(ExportRequest::OtlpHttp(Protocol::HttpJson))
        );
    }

    #[test]
    fn unsupported_choices_are_refused_with_the_variable_named() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317");
        let grpc = request(&[endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]).unwrap_err();
        assert!(grpc.starts_with("OTEL_EXPORTER_OTLP_PROTOCOL=grpc"), "{grpc}");
        let zipkin = request(&[endpoint, ("OTEL_TRACES_EXPORTER", "zipkin")]).unwrap_err();
        assert!(zipkin.starts_with("OTEL_TRACES_EXPORTER=zipkin"), "{zipkin}");
        let tls = request(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector.example.com")]).unwrap_err();
        assert!(tls.starts_with("OTEL_EXPORTER_OTLP_ENDPOINT=https://"), "{tls}");
    }
}
