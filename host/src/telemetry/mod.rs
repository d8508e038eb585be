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

impl LogFormat {
    /// `QA_LOG_FORMAT` (`json` or `text`), else Lambda's own `AWS_LAMBDA_LOG_FORMAT` (set by
    /// the function's logging configuration), else JSON under Lambda and text elsewhere.
    pub fn from_env(under_lambda: bool) -> Self {
        let named = std::env::var("QA_LOG_FORMAT").or_else(|_| std::env::var("AWS_LAMBDA_LOG_FORMAT"));
        match named.map(|v| v.to_ascii_lowercase()) {
            Ok(v) if v == "json" => Self::Json,
            Ok(v) if v == "text" => Self::Text,
            _ if under_lambda => Self::Json,
            _ => Self::Text,
        }
    }
}

/// Installs the global subscriber. The filter is `QA_LOG` (e.g. `info`, `qa_host=debug`), else
/// Lambda's `AWS_LAMBDA_LOG_LEVEL`, else `info` under Lambda (one line per invocation) and
/// `warn` elsewhere. ONNX Runtime's messages (target `ort`) stay at `warn` unless the filter
/// names `ort` (`QA_LOG=info,ort=info`): at `info` it writes dozens of lines per model load.
pub fn init_logging(under_lambda: bool) {
    let default = if under_lambda { "info" } else { "warn" };
    let directives = std::env::var("QA_LOG")
        .ok()
        .filter(|v| EnvFilter::try_new(v).is_ok())
        .or_else(|| std::env::var("AWS_LAMBDA_LOG_LEVEL").ok().map(|level| lambda_level_directive(&level).to_string()))
        .unwrap_or_else(|| default.to_string());
    let filter = EnvFilter::new(with_onnx_runtime_capped(&directives));
    // Colours only for a terminal: CloudWatch, files and pipes get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr).with_ansi(ansi).with_env_filter(filter);
    match LogFormat::from_env(under_lambda) {
        // Event fields at the top level, the enclosing span (which holds `request_id`) as
        // `span`: one self-contained JSON object per line for CloudWatch Logs Insights.
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).with_span_list(false).init(),
        LogFormat::Text => builder.init(),
    }
}

/// Lambda's level names (`TRACE`..`FATAL`) as a filter directive.
fn lambda_level_directive(level: &str) -> &'static str {
    match level.to_ascii_lowercase().as_str() {
        "trace" => "trace",
        "debug" => "debug",
        "warn" => "warn",
        "error" | "fatal" => "error",
        _ => "info",
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

    #[test]
    fn lambda_level_names_become_directives() {
        let cases = [
            ("TRACE", "trace"),
            ("DEBUG", "debug"),
            ("INFO", "info"),
            ("WARN", "warn"),
            ("ERROR", "error"),
            ("FATAL", "error"),
            ("?", "info"),
        ];
        for (level, directive) in cases {
            assert_eq!(lambda_level_directive(level), directive, "{level}");
        }
    }
}
