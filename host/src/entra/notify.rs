//! Change notifications as a fast trigger: a receiver for Graph's webhook
//! calls (validation handshake, `clientState` check) and subscription
//! creation and renewal. A notification only wakes the sync loop; the delta
//! query still says what changed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::sync::Notify;

use super::{EntraClient, EntraError};
use crate::config::SecretString;

/// Counters of the receiver.
#[derive(Debug, Default)]
pub struct ReceiverStats {
    /// Notifications with the right `clientState`.
    pub accepted: AtomicU64,
    /// Notifications refused for a missing or wrong `clientState`.
    pub rejected: AtomicU64,
    /// Validation handshakes answered.
    pub validations: AtomicU64,
}

#[derive(Clone)]
struct Shared {
    client_state: SecretString,
    trigger: Arc<Notify>,
    stats: Arc<ReceiverStats>,
}

/// A running receiver.
pub struct Receiver {
    pub addr: SocketAddr,
    pub trigger: Arc<Notify>,
    pub stats: Arc<ReceiverStats>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    /// Listens on `listen` (port 0 picks one) for `/graph/notify` and
    /// `/graph/lifecycle`.
    pub async fn start(listen: &str, client_state: SecretString) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let trigger = Arc::new(Notify::new());
        let stats = Arc::new(ReceiverStats::default());
        let shared = Shared {
            client_state,
            trigger: trigger.clone(),
            stats: stats.clone(),
        };
        let app = Router::new()
            .route("/graph/notify", post(notify))
            .route("/graph/lifecycle", post(notify))
            .with_state(shared);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            addr,
            trigger,
            stats,
            task,
        })
    }
}

async fn notify(
    State(s): State<Shared>,
    Query(q): Query<std::collections::HashMap<String, String>>,
    body: Bytes,
) -> Response {
    // Handshake: echo the (already URL-decoded) token as text/plain.
    if let Some(token) = q.get("validationToken") {
        s.stats.validations.fetch_add(1, Ordering::Relaxed);
        return (
            StatusCode::OK,
            [("content-type", "text/plain; charset=utf-8")],
            token.clone(),
        )
            .into_response();
    }
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let items = v
        .get("value")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut wake = false;
    for item in &items {
        // Anyone can POST here; only Graph knows the clientState.
        if item.get("clientState").and_then(Value::as_str) == Some(s.client_state.expose()) {
            s.stats.accepted.fetch_add(1, Ordering::Relaxed);
            wake = true;
        } else {
            s.stats.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("change notification with a wrong clientState ignored");
        }
    }
    if wake {
        s.trigger.notify_one();
    }
    // Answer fast; the poll happens in the sync loop.
    StatusCode::ACCEPTED.into_response()
}

/// One live subscription.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub id: String,
    pub resource: String,
    pub expires: chrono::DateTime<chrono::Utc>,
}

/// How long subscriptions are asked for, and when they are renewed.
const LIFETIME_MINUTES: i64 = 2 * 24 * 60;
const RENEW_WHEN_LEFT_MINUTES: i64 = 24 * 60;

impl EntraClient {
    /// Creates a subscription for `resource` (`users` or `groups`).
    pub async fn subscribe(
        &self,
        resource: &str,
        notification_url: &str,
        lifecycle_url: &str,
        client_state: &SecretString,
    ) -> Result<Subscription, EntraError> {
        let expires = chrono::Utc::now() + chrono::Duration::minutes(LIFETIME_MINUTES);
        let body = json!({
            "changeType": "updated,deleted",
            "resource": resource,
            "notificationUrl": notification_url,
            "lifecycleNotificationUrl": lifecycle_url,
            "expirationDateTime": expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "clientState": client_state.expose(),
        });
        let url = format!("{}/v1.0/subscriptions", self.graph_base());
        let v = self.send_json(reqwest::Method::POST, &url, &body).await?;
        subscription_from(&url, resource, &v)
    }

    /// Extends a subscription; 404 means it is gone and must be recreated.
    pub async fn renew(&self, sub: &Subscription) -> Result<Subscription, EntraError> {
        let expires = chrono::Utc::now() + chrono::Duration::minutes(LIFETIME_MINUTES);
        let url = format!("{}/v1.0/subscriptions/{}", self.graph_base(), sub.id);
        let v = self.send_json(reqwest::Method::PATCH, &url, &json!({"expirationDateTime": expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)})).await?;
        subscription_from(&url, &sub.resource, &v)
    }
}

fn subscription_from(url: &str, resource: &str, v: &Value) -> Result<Subscription, EntraError> {
    let id = v
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| EntraError::Malformed {
            url: url.into(),
            detail: "subscription without id".into(),
        })?;
    let expires = v
        .get("expirationDateTime")
        .and_then(Value::as_str)
        .and_then(|s| s.parse::<chrono::DateTime<chrono::Utc>>().ok())
        .ok_or_else(|| EntraError::Malformed {
            url: url.into(),
            detail: "subscription without a valid expirationDateTime".into(),
        })?;
    Ok(Subscription {
        id: id.into(),
        resource: resource.into(),
        expires,
    })
}

/// The receiver plus the subscriptions it is fed by.
pub struct FastTrigger {
    pub receiver: Receiver,
    notification_url: String,
    lifecycle_url: String,
    client_state: SecretString,
    pub subscriptions: Vec<Subscription>,
}

impl FastTrigger {
    /// Starts the receiver, then subscribes to users and groups (Graph
    /// validates the endpoint during creation, so the receiver comes first).
    pub async fn start(
        entra: &EntraClient,
        listen: &str,
        public_url: Option<&str>,
        client_state: SecretString,
    ) -> Result<Self, EntraError> {
        let receiver = Receiver::start(listen, client_state.clone())
            .await
            .map_err(|e| EntraError::Credential {
                detail: format!("cannot listen for change notifications on {listen}: {e}"),
            })?;
        let base = public_url
            .map(|u| u.trim_end_matches('/').to_string())
            .unwrap_or_else(|| format!("http://{}", receiver.addr));
        let mut t = Self {
            receiver,
            notification_url: format!("{base}/graph/notify"),
            lifecycle_url: format!("{base}/graph/lifecycle"),
            client_state,
            subscriptions: Vec::new(),
        };
        for resource in ["users", "groups"] {
            let s = entra
                .subscribe(
                    resource,
                    &t.notification_url,
                    &t.lifecycle_url,
                    &t.client_state,
                )
                .await?;
            t.subscriptions.push(s);
        }
        Ok(t)
    }

    /// Renews subscriptions close to expiry; recreates any that vanished.
    pub async fn renew_if_due(&mut self, entra: &EntraClient) -> Result<(), EntraError> {
        let soon = chrono::Utc::now() + chrono::Duration::minutes(RENEW_WHEN_LEFT_MINUTES);
        for s in self.subscriptions.iter_mut() {
            if s.expires > soon {
                continue;
            }
            *s = match entra.renew(s).await {
                Ok(renewed) => renewed,
                Err(EntraError::Graph { status: 404, .. }) => {
                    entra
                        .subscribe(
                            &s.resource,
                            &self.notification_url,
                            &self.lifecycle_url,
                            &self.client_state,
                        )
                        .await?
                }
                Err(e) => return Err(e),
            };
        }
        Ok(())
    }

    /// Resolves when a notification arrives.
    pub async fn notified(&self) {
        self.receiver.trigger.notified().await;
    }
}
