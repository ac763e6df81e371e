//! Prometheus text exposition (format 0.0.4) for `/metrics`: counters and
//! gauges read at scrape time from the counters the services already keep.

use axum::http::header;
use axum::response::{IntoResponse, Response};

/// One scrape's worth of metrics, written in order.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
}

/// Prometheus metric names are `[a-zA-Z_:][a-zA-Z0-9_:]*`; ours are static
/// and checked in tests, so this only guards against a typo at runtime.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_owned()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        value.to_string()
    }
}

impl Exposition {
    pub fn new() -> Self {
        Self::default()
    }

    fn metric(&mut self, kind: &str, name: &str, help: &str, value: f64) -> &mut Self {
        if !valid_name(name) {
            tracing::error!(name, "metric name is invalid; skipped");
            return self;
        }
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        self.text.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}\n",
            number(value)
        ));
        self
    }

    /// A value that only goes up (since the process started).
    pub fn counter(&mut self, name: &str, help: &str, value: u64) -> &mut Self {
        #[allow(clippy::cast_precision_loss)] // exact below 2^53
        self.metric("counter", name, help, value as f64)
    }

    /// A value that goes up and down.
    pub fn gauge(&mut self, name: &str, help: &str, value: f64) -> &mut Self {
        self.metric("gauge", name, help, value)
    }

    pub fn into_text(self) -> String {
        self.text
    }
}

impl IntoResponse for Exposition {
    fn into_response(self) -> Response {
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            self.text,
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_help_type_and_value() {
        let mut metrics = Exposition::new();
        metrics
            .counter("polyhub_things_total", "Things done.", 3)
            .gauge("polyhub_lag_seconds", "How far behind.\nSecond line.", 0.25)
            .gauge("bad name", "skipped", 1.0);
        assert_eq!(
            metrics.into_text(),
            "# HELP polyhub_things_total Things done.\n\
             # TYPE polyhub_things_total counter\n\
             polyhub_things_total 3\n\
             # HELP polyhub_lag_seconds How far behind.\\nSecond line.\n\
             # TYPE polyhub_lag_seconds gauge\n\
             polyhub_lag_seconds 0.25\n"
        );
    }
}
