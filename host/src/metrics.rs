//! Prometheus metrics of a running engine (`[metrics] listen`, served at
//! `GET /metrics` in the text exposition format).

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// `outcome` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub outcome: String,
}

/// The engine's counters.
pub struct Metrics {
    registry: Registry,
    /// Sync cycles by outcome (`completed`, `failed`).
    pub cycles: Family<Outcome, Counter>,
    /// Rule pack reloads by outcome (`replaced`, `refused`): a refused
    /// reload means the last good pack is still running.
    pub rule_reloads: Family<Outcome, Counter>,
    /// Host API calls and intents refused because the pack did not declare them.
    pub rule_refusals: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("provisor");
        let cycles = Family::<Outcome, Counter>::default();
        let rule_reloads = Family::<Outcome, Counter>::default();
        let rule_refusals = Counter::default();
        registry.register("cycles", "Sync cycles by outcome", cycles.clone());
        registry.register(
            "rule_reloads",
            "Rule pack reloads by outcome (refused: the last good pack keeps running)",
            rule_reloads.clone(),
        );
        registry.register(
            "rule_refusals",
            "Requests of rule packs refused by their manifest",
            rule_refusals.clone(),
        );
        Self {
            registry,
            cycles,
            rule_reloads,
            rule_refusals,
        }
    }
}

impl Metrics {
    /// Counts one outcome of a family.
    pub fn count(family: &Family<Outcome, Counter>, outcome: &str) {
        family
            .get_or_create(&Outcome {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Serves `GET /metrics` on `addr` until the process ends; returns the
    /// bound address.
    pub async fn serve(self: Arc<Self>, addr: &str) -> std::io::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let m = self.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.render(),
                    )
                }
            }),
        );
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "the metrics endpoint stopped");
            }
        });
        Ok(bound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_in_the_text_format() {
        let m = Metrics::default();
        Metrics::count(&m.rule_reloads, "refused");
        Metrics::count(&m.rule_reloads, "refused");
        m.rule_refusals.inc();
        let text = m.render();
        assert!(
            text.contains("provisor_rule_reloads_total{outcome=\"refused\"} 2"),
            "{text}"
        );
        assert!(text.contains("provisor_rule_refusals_total 1"), "{text}");
    }

    #[tokio::test]
    async fn the_endpoint_serves_the_counters() {
        let m = Arc::new(Metrics::default());
        Metrics::count(&m.cycles, "completed");
        let addr = m.clone().serve("127.0.0.1:0").await.expect("binds");
        let body = reqwest::get(format!("http://{addr}/metrics"))
            .await
            .expect("answers")
            .text()
            .await
            .expect("body");
        assert!(
            body.contains("provisor_cycles_total{outcome=\"completed\"} 1"),
            "{body}"
        );
    }
}
