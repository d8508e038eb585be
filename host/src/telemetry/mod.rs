//! What the host tells its operators: logs (text on a terminal, JSON lines on Lambda, each
//! carrying the invocation's request id) and CloudWatch metrics as Embedded Metric Format
//! lines ([`emf`]). Both go to stderr, which Lambda sends to CloudWatch Logs; stdout stays
//! free for `qa-host ask`'s answer.

pub mod emf;
pub mod layer;

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
/// `warn` elsewhere.
pub fn init_logging(under_lambda: bool) {
    let default = if under_lambda { "info" } else { "warn" };
    let filter = EnvFilter::try_from_env("QA_LOG")
        .or_else(|_| std::env::var("AWS_LAMBDA_LOG_LEVEL").map(|level| lambda_level_filter(&level)))
        .unwrap_or_else(|_| EnvFilter::new(default));
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

/// Lambda's level names (`TRACE`..`FATAL`) as a filter.
fn lambda_level_filter(level: &str) -> EnvFilter {
    let level = level.to_ascii_lowercase();
    EnvFilter::new(match level.as_str() {
        "fatal" => "error",
        "trace" | "debug" | "info" | "warn" | "error" => level.as_str(),
        _ => "info",
    })
}
