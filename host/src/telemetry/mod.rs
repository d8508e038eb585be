//! What the host tells its operators: logs (text on a terminal, JSON lines on Lambda, each
//! carrying the invocation's request id) and CloudWatch metrics as Embedded Metric Format
//! lines ([`emf`]). Both go to stderr, which Lambda sends to CloudWatch Logs; stdout stays
//! free for `qa-host ask`'s answer. Under `qa-host serve`, the same measurements are
//! Prometheus metrics ([`prom`], `GET /metrics`).

pub mod emf;
pub mod layer;
pub mod prom;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Logging and metrics, read with every other setting, so a bad value stops start-up naming
/// it instead of being dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TelemetryConfig {
    /// The log filter: `QA_LOG` (checked as a filter), else Lambda's `AWS_LAMBDA_LOG_LEVEL` as
    /// one; `None` leaves it to the command (`info` under Lambda, `warn` elsewhere).
    pub log_filter: Option<String>,
    /// `QA_LOG_FORMAT`, else Lambda's `AWS_LAMBDA_LOG_FORMAT`; `None` leaves it to the command
    /// (JSON under Lambda, text elsewhere).
    pub log_format: Option<LogFormat>,
    /// CloudWatch EMF metric lines (`POWERTOOLS_METRICS_DISABLED` turns them off).
    pub metrics_enabled: bool,
    /// `POWERTOOLS_METRICS_NAMESPACE`, the original sample's Powertools variable.
    pub metrics_namespace: String,
    /// `POWERTOOLS_SERVICE_NAME`.
    pub service_name: String,
    /// `AWS_LAMBDA_FUNCTION_NAME`, set by Lambda; `local` elsewhere.
    pub function_name: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_filter: None,
            log_format: None,
            metrics_enabled: true,
            metrics_namespace: emf::DEFAULT_NAMESPACE.into(),
            service_name: emf::DEFAULT_SERVICE.into(),
            function_name: "local".into(),
        }
    }
}

/// Installs the global subscriber with `settings` (read and checked with the rest of the
/// configuration). Unset, the filter is `info` under Lambda (one line per invocation) and
/// `warn` elsewhere, and lines are JSON under Lambda and text elsewhere. ONNX Runtime's
/// messages (target `ort`) stay at `warn` unless the filter names `ort`
/// (`QA_LOG=info,ort=info`): at `info` it writes dozens of lines per model load.
pub fn init_logging(under_lambda: bool, settings: &TelemetryConfig) {
    let default = if under_lambda { "info" } else { "warn" };
    let directives = settings.log_filter.as_deref().unwrap_or(default);
    let filter = EnvFilter::try_new(with_onnx_runtime_capped(directives)).unwrap_or_else(|_| EnvFilter::new(default));
    // Colours only for a terminal: CloudWatch, files and pipes get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr).with_ansi(ansi).with_env_filter(filter);
    match settings.log_format.unwrap_or(if under_lambda { LogFormat::Json } else { LogFormat::Text }) {
        // Event fields at the top level, the enclosing span (which holds `request_id`) as
        // `span`: one self-contained JSON object per line for CloudWatch Logs Insights.
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).with_span_list(false).init(),
        LogFormat::Text => builder.init(),
    }
}

/// `directives` with `ort=warn` added, unless one of them already sets the `ort` target.
fn with_onnx_runtime_capped(directives: &str) -> String {
    let names_ort = directives.split(',').any(|d| {
        let target = d.trim().split(['=', '[']).next().unwrap_or_default();
        target == "ort" || target.starts_with("ort::")
    });
    if names_ort { directives.to_string() } else { format!("{directives},ort=warn") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn onnx_runtime_stays_at_warn_unless_the_filter_names_it() {
        assert_eq!(with_onnx_runtime_capped("info"), "info,ort=warn");
        assert_eq!(with_onnx_runtime_capped("qa_host=debug,report=info"), "qa_host=debug,report=info,ort=warn");
        assert_eq!(with_onnx_runtime_capped("info,ort=info"), "info,ort=info");
        assert_eq!(with_onnx_runtime_capped("ort::logging=trace"), "ort::logging=trace");
        assert_eq!(with_onnx_runtime_capped("ort[session]=debug"), "ort[session]=debug");
    }
}
