//! CloudWatch Embedded Metric Format: one JSON line per invocation whose `_aws` block tells
//! CloudWatch which top-level keys are metrics and which are dimensions. No API calls, no
//! agent: Lambda ships the line to CloudWatch Logs and CloudWatch extracts the metrics.
//!
//! Namespace and service come from `POWERTOOLS_METRICS_NAMESPACE` and
//! `POWERTOOLS_SERVICE_NAME`, the variables the original Python sample's Powertools read;
//! `POWERTOOLS_METRICS_DISABLED` (`true`, `1`, `on` or `yes`) turns the lines off; all read with
//! the rest of the configuration ([`super::TelemetryConfig`]).

use crate::api::{ApiError, QaReply};
use crate::guest::Origin;
use serde_json::{Map, Value, json};
use std::io::Write;
use std::time::Duration;

pub const DEFAULT_NAMESPACE: &str = "QaWasmLambda";
pub const DEFAULT_SERVICE: &str = "qa-host";

/// Where metric lines go and what they are labelled with.
#[derive(Clone, Debug)]
pub struct Metrics {
    pub namespace: String,
    pub service: String,
    pub function_name: String,
    pub enabled: bool,
}

/// What the environment did before its first invocation, reported once, with that invocation.
#[derive(Clone, Copy, Debug)]
pub struct ColdStart {
    /// Process start to ready for the first event (guest loaded, preloads done).
    pub init: Duration,
    pub guest_load: Duration,
    pub guest_origin: Origin,
    /// Restored from a SnapStart snapshot: the restore call's return to ready (the init
    /// phase ran when the version was published, so `init` is not this environment's).
    pub restore: Option<Duration>,
}

/// One invocation's outcome.
pub struct Invocation<'a> {
    pub request_id: &'a str,
    /// The model that answered; for a failed request the one it named if that exists,
    /// `"unknown"` if not (so made-up names cannot create metric series), `None` when the
    /// event did not parse.
    pub model: Option<&'a str>,
    pub result: Result<&'a QaReply, &'a ApiError>,
    pub total: Duration,
}

impl Metrics {
    /// The labels and switch the configuration read.
    pub fn new(settings: &super::TelemetryConfig) -> Self {
        Self {
            namespace: settings.metrics_namespace.clone(),
            service: settings.service_name.clone(),
            function_name: settings.function_name.clone(),
            enabled: settings.metrics_enabled,
        }
    }

    /// The metric line for one invocation; `cold` only on the process's first.
    pub fn invocation_line(&self, invocation: &Invocation, cold: Option<&ColdStart>, timestamp_ms: u64) -> Value {
        let mut fields = Map::new();
        let mut request_metrics = Vec::new();
        let metric = |fields: &mut Map<String, Value>, list: &mut Vec<Value>, name: &str, unit: &str, value: f64| {
            fields.insert(name.to_string(), json!(value));
            list.push(json!({"Name": name, "Unit": unit}));
        };
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        metric(&mut fields, &mut request_metrics, "Requests", "Count", 1.0);
        metric(&mut fields, &mut request_metrics, "TotalTime", "Milliseconds", ms(invocation.total));
        match invocation.result {
            Ok(response) => {
                let t = &response.timings_ms;
                metric(&mut fields, &mut request_metrics, "Errors", "Count", 0.0);
                metric(&mut fields, &mut request_metrics, "FetchTime", "Milliseconds", t.fetch);
                metric(&mut fields, &mut request_metrics, "GuestTime", "Milliseconds", t.guest);
                metric(&mut fields, &mut request_metrics, "TokenizeTime", "Milliseconds", t.tokenize);
                metric(&mut fields, &mut request_metrics, "InferenceTime", "Milliseconds", t.inference);
                metric(&mut fields, &mut request_metrics, "DecodeTime", "Milliseconds", t.decode);
                let loaded = response.model_loaded;
                metric(&mut fields, &mut request_metrics, "ModelCacheHit", "Count", if loaded { 0.0 } else { 1.0 });
                metric(&mut fields, &mut request_metrics, "ModelCacheMiss", "Count", if loaded { 1.0 } else { 0.0 });
                fields.insert("model_version".into(), json!(response.model_version));
                fields.insert("windows".into(), json!(response.windows));
            }
            Err(error) => {
                metric(&mut fields, &mut request_metrics, "Errors", "Count", 1.0);
                fields.insert("error_code".into(), json!(error.code()));
                fields.insert("status".into(), json!(error.status()));
            }
        }
        let mut directives = vec![json!({
            "Namespace": self.namespace,
            "Dimensions": [["service", "model"]],
            "Metrics": request_metrics,
        })];
        if let Some(cold) = cold {
            let mut cold_metrics = Vec::new();
            metric(&mut fields, &mut cold_metrics, "ColdStart", "Count", 1.0);
            match cold.restore {
                Some(restore) => metric(&mut fields, &mut cold_metrics, "RestoreTime", "Milliseconds", ms(restore)),
                None => metric(&mut fields, &mut cold_metrics, "InitTime", "Milliseconds", ms(cold.init)),
            }
            fields.insert("init_type".into(), json!(if cold.restore.is_some() { "snap-start" } else { "on-demand" }));
            metric(&mut fields, &mut cold_metrics, "GuestLoadTime", "Milliseconds", ms(cold.guest_load));
            let compiled = matches!(cold.guest_origin, Origin::Compiled);
            metric(&mut fields, &mut cold_metrics, "GuestCacheHit", "Count", if compiled { 0.0 } else { 1.0 });
            metric(&mut fields, &mut cold_metrics, "GuestCacheMiss", "Count", if compiled { 1.0 } else { 0.0 });
            fields.insert("guest_origin".into(), json!(format!("{:?}", cold.guest_origin).to_lowercase()));
            directives.push(json!({
                "Namespace": self.namespace,
                "Dimensions": [["service", "function_name"]],
                "Metrics": cold_metrics,
            }));
        }
        fields.insert("service".into(), json!(self.service));
        fields.insert("model".into(), json!(invocation.model.unwrap_or("none")));
        fields.insert("function_name".into(), json!(self.function_name));
        fields.insert("request_id".into(), json!(invocation.request_id));
        fields.insert("_aws".into(), json!({"Timestamp": timestamp_ms, "CloudWatchMetrics": directives}));
        Value::Object(fields)
    }

    /// A metric line of its own: `metrics` (name, unit, value) under the dimensions `service`
    /// plus `dimensions` (name, value: keep their values few, each makes a metric series),
    /// with `properties` as searchable fields.
    pub fn line(
        &self,
        dimensions: &[(&str, &str)],
        metrics: &[(&str, &str, f64)],
        properties: Map<String, Value>,
        timestamp_ms: u64,
    ) -> Value {
        let mut fields = properties;
        let mut keys = vec![json!("service")];
        fields.insert("service".into(), json!(self.service));
        for (name, value) in dimensions {
            keys.push(json!(name));
            fields.insert((*name).to_string(), json!(value));
        }
        let list: Vec<Value> = metrics
            .iter()
            .map(|(name, unit, value)| {
                fields.insert((*name).to_string(), json!(value));
                json!({"Name": name, "Unit": unit})
            })
            .collect();
        let directive = json!({"Namespace": self.namespace, "Dimensions": [keys], "Metrics": list});
        fields.insert("_aws".into(), json!({"Timestamp": timestamp_ms, "CloudWatchMetrics": [directive]}));
        Value::Object(fields)
    }

    /// Writes `line` to stderr as one line (a single write, so it never interleaves with logs).
    pub fn emit(&self, line: &Value) {
        if !self.enabled {
            return;
        }
        let mut text = line.to_string();
        text.push('\n');
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
    }
}

/// Milliseconds since the Unix epoch: a metric line's timestamp.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Checks a line against what CloudWatch needs to extract metrics from it: a millisecond
/// `Timestamp`, a namespace per directive, every dimension a top-level string and every metric
/// a top-level number with a known unit. Used by the tests of this module and of the binary.
pub fn validate(line: &Value) -> Result<(), String> {
    let fail = |what: String| Err(format!("{what} in {line}"));
    let aws = &line["_aws"];
    if aws["Timestamp"].as_u64().is_none() {
        return fail("no integer _aws.Timestamp".into());
    }
    let Some(directives) = aws["CloudWatchMetrics"].as_array().filter(|d| !d.is_empty()) else {
        return fail("no _aws.CloudWatchMetrics directives".into());
    };
    for directive in directives {
        if directive["Namespace"].as_str().is_none_or(|n| n.is_empty() || n.len() > 1024) {
            return fail("a directive without a valid Namespace".into());
        }
        for set in directive["Dimensions"].as_array().into_iter().flatten() {
            for key in set.as_array().into_iter().flatten() {
                let key = key.as_str().unwrap_or_default();
                if !line[key].is_string() {
                    return fail(format!("dimension {key:?} is not a top-level string"));
                }
            }
        }
        for metric in directive["Metrics"].as_array().into_iter().flatten() {
            let name = metric["Name"].as_str().unwrap_or_default();
            if !line[name].is_number() {
                return fail(format!("metric {name:?} is not a top-level number"));
            }
            if !["Count", "Milliseconds", "None"].contains(&metric["Unit"].as_str().unwrap_or_default()) {
                return fail(format!("metric {name:?} has an unexpected unit"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{OneAnswer, PhaseTimings, QaResponse};

    fn metrics() -> Metrics {
        Metrics { namespace: "Ns".into(), service: "svc".into(), function_name: "fn".into(), enabled: true }
    }

    fn response(model_loaded: bool) -> QaReply {
        QaReply::from(QaResponse {
            model_type: "nlp1".into(),
            body: OneAnswer { question: "q".into(), answer: "a".into(), score: 0.5, start: 0, end: 1, answers: vec![] },
            windows: 1,
            model_version: "v1".into(),
            guest_version: "0123456789ab".into(),
            timings_ms: PhaseTimings { fetch: 1.0, guest: 2.0, tokenize: 0.5, inference: 1.2, decode: 0.1, total: 3.0 },
            model_loaded,
        })
    }

    #[test]
    fn a_warm_success_reports_phases_and_a_model_cache_hit() {
        let r = response(false);
        let line = metrics().invocation_line(
            &Invocation { request_id: "id-1", model: Some("nlp1"), result: Ok(&r), total: Duration::from_millis(4) },
            None,
            1_700_000_000_000,
        );
        validate(&line).unwrap();
        assert_eq!(line["ModelCacheHit"], 1.0);
        assert_eq!(line["ModelCacheMiss"], 0.0);
        assert_eq!(line["InferenceTime"], 1.2);
        assert_eq!(line["request_id"], "id-1");
        assert!(line.get("ColdStart").is_none());
        assert_eq!(line["_aws"]["CloudWatchMetrics"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn a_cold_start_adds_its_own_directive() {
        let r = response(true);
        let cold = ColdStart {
            init: Duration::from_millis(140),
            guest_load: Duration::from_millis(6),
            guest_origin: Origin::Shipped,
            restore: None,
        };
        let line = metrics().invocation_line(
            &Invocation { request_id: "id", model: Some("nlp1"), result: Ok(&r), total: Duration::from_millis(30) },
            Some(&cold),
            1,
        );
        validate(&line).unwrap();
        assert_eq!(line["ColdStart"], 1.0);
        assert_eq!(line["GuestCacheHit"], 1.0);
        assert_eq!(line["ModelCacheMiss"], 1.0);
        assert_eq!(line["guest_origin"], "shipped");
        assert_eq!((&line["InitTime"], &line["init_type"]), (&json!(140.0), &json!("on-demand")));
        assert_eq!(line["_aws"]["CloudWatchMetrics"][1]["Dimensions"], json!([["service", "function_name"]]));
        // Restored from a snapshot: the restore's time, not the publish-time init.
        let restored = ColdStart { restore: Some(Duration::from_millis(12)), ..cold };
        let line = metrics().invocation_line(
            &Invocation { request_id: "id", model: Some("nlp1"), result: Ok(&r), total: Duration::from_millis(30) },
            Some(&restored),
            1,
        );
        validate(&line).unwrap();
        assert_eq!((&line["RestoreTime"], &line["init_type"]), (&json!(12.0), &json!("snap-start")));
        assert!(line.get("InitTime").is_none(), "{line}");
    }

    #[test]
    fn an_error_is_counted_with_its_code() {
        let error = ApiError::EmptyQuestion;
        let line = metrics().invocation_line(
            &Invocation { request_id: "id", model: None, result: Err(&error), total: Duration::from_millis(1) },
            None,
            1,
        );
        validate(&line).unwrap();
        assert_eq!(line["Errors"], 1.0);
        assert_eq!(line["error_code"], error.code());
        assert_eq!(line["status"], 400);
        assert_eq!(line["model"], "none");
    }

    #[test]
    fn validate_refuses_lines_cloudwatch_would_drop() {
        let r = response(false);
        let good =
            metrics().invocation_line(&Invocation { request_id: "id", model: Some("m"), result: Ok(&r), total: Duration::ZERO }, None, 1);
        let mut missing_metric = good.clone();
        missing_metric.as_object_mut().unwrap().remove("TotalTime");
        assert!(validate(&missing_metric).unwrap_err().contains("TotalTime"));
        let mut missing_dimension = good.clone();
        missing_dimension.as_object_mut().unwrap().remove("service");
        assert!(validate(&missing_dimension).unwrap_err().contains("service"));
        let mut no_timestamp = good;
        no_timestamp["_aws"]["Timestamp"] = json!("now");
        assert!(validate(&no_timestamp).is_err());
    }
}
