//! One HTTP client and one retry policy for both clouds.
//!
//! Retries are reasoned: throttling (429) waits as `Retry-After` says, or
//! backs off; for idempotent requests 5xx (honouring `Retry-After` when
//! present) and transport failures back off exponentially with jitter;
//! anything else is the caller's to interpret. Non-idempotent requests
//! (creates) are not retried on 5xx or transport errors: a lost response
//! may hide a committed write, and the engine recovers that by matching on
//! the next cycle. A 429 is safe to retry for any request: nothing was done.

use std::time::Duration;

use rand::Rng;
use reqwest::{Response, StatusCode};

/// How hard to retry.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// First backoff; doubles each time.
    pub base: Duration,
    /// Cap of one backoff or `Retry-After` wait.
    pub max_wait: Duration,
    /// Throttling (429) is waited out within this time budget rather than a
    /// count of attempts: retrying early only spends more quota.
    pub throttle_budget: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 5,
            base: Duration::from_millis(200),
            max_wait: Duration::from_secs(60),
            throttle_budget: Duration::from_secs(600),
        }
    }
}

/// Why the shared HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot read the CA file {path}")]
    ReadCa {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the CA file {path} holds no usable PEM certificate")]
    BadCa {
        path: std::path::PathBuf,
        #[source]
        source: Option<reqwest::Error>,
    },
    #[error("cannot build the HTTP client")]
    Build(#[source] reqwest::Error),
}

/// Builds the shared client (rustls, timeouts, a user agent naming us).
pub fn client() -> Result<reqwest::Client, ClientError> {
    client_trusting(&[])
}

/// The shared client, also trusting the certificates in `ca_files` (PEM):
/// a TLS-inspecting proxy's CA, or the emulator's generated certificate.
pub fn client_trusting(ca_files: &[std::path::PathBuf]) -> Result<reqwest::Client, ClientError> {
    let mut b = reqwest::Client::builder()
        .user_agent(concat!("provisor/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(120));
    for path in ca_files {
        let pem = std::fs::read(path).map_err(|source| ClientError::ReadCa {
            path: path.clone(),
            source,
        })?;
        let certs =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ClientError::BadCa {
                path: path.clone(),
                source: Some(e),
            })?;
        if certs.is_empty() {
            return Err(ClientError::BadCa {
                path: path.clone(),
                source: None,
            });
        }
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    b.build().map_err(ClientError::Build)
}

/// Parses `Retry-After` (seconds, possibly fractional).
pub fn retry_after(resp: &Response) -> Option<Duration> {
    let v = resp.headers().get("retry-after")?.to_str().ok()?;
    let secs: f64 = v.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

/// Outcome of one attempt, as the retry loop sees it.
pub enum Attempt {
    /// Done: hand the response to the caller.
    Done(Response),
    /// Retry after this long.
    Retry(Duration, Response),
}

impl RetryPolicy {
    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self.base.saturating_mul(1u32 << attempt.min(16));
        let jitter = rand::rng().random_range(0.5..1.5);
        exp.mul_f64(jitter).min(self.max_wait)
    }

    /// Classifies a response: throttling and server errors are retried.
    pub fn classify(&self, resp: Response, attempt: u32, idempotent: bool) -> Attempt {
        let status = resp.status();
        if status == StatusCode::TOO_MANY_REQUESTS {
            let wait = retry_after(&resp).unwrap_or_else(|| self.backoff(attempt));
            return Attempt::Retry(wait.min(self.max_wait), resp);
        }
        if idempotent && status.is_server_error() {
            let wait = retry_after(&resp).unwrap_or_else(|| self.backoff(attempt));
            return Attempt::Retry(wait.min(self.max_wait), resp);
        }
        Attempt::Done(resp)
    }

    /// Sends the request `make` builds, retrying as the policy says.
    /// Transport errors are retried for idempotent requests only.
    pub async fn send<F>(&self, idempotent: bool, make: F) -> reqwest::Result<Response>
    where
        F: Fn() -> reqwest::RequestBuilder,
    {
        let started = std::time::Instant::now();
        let mut attempt = 0;
        loop {
            let last = attempt + 1 >= self.attempts;
            match make().send().await {
                Ok(resp) => {
                    let throttled = resp.status() == StatusCode::TOO_MANY_REQUESTS;
                    match self.classify(resp, attempt, idempotent) {
                        Attempt::Done(r) => return Ok(r),
                        Attempt::Retry(wait, r) if throttled => {
                            if started.elapsed() + wait > self.throttle_budget {
                                return Ok(r);
                            }
                            tracing::debug!(?wait, "throttled; waiting as told");
                            tokio::time::sleep(wait).await;
                            // Throttling spends the time budget, not attempts.
                            continue;
                        }
                        Attempt::Retry(_, r) if last => return Ok(r),
                        Attempt::Retry(wait, _) => {
                            tracing::debug!(?wait, attempt, "retrying after a failed response");
                            tokio::time::sleep(wait).await;
                        }
                    }
                }
                Err(e)
                    if idempotent
                        && !last
                        && (e.is_connect() || e.is_timeout() || e.is_request()) =>
                {
                    tokio::time::sleep(self.backoff(attempt)).await;
                }
                Err(e) => return Err(e),
            }
            attempt += 1;
        }
    }
}
