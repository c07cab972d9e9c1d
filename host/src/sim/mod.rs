//! Emulators of the Microsoft identity platform + Graph and of Salesforce,
//! served together on one port (`provisor sim`, `provisor demo`, tests).
//!
//! They speak the documented protocols (URLs, JSON shapes, paging, error
//! bodies, limit headers) so the real host can be developed and tested
//! without accounts. An admin API under `/_sim/` (a prefix neither cloud
//! uses) changes the tenant while the host runs and injects faults.

// Handlers return ready responses as their error values; they are built
// once per request, so their size is irrelevant.
#![allow(clippy::result_large_err)]

mod admin;
pub mod graph;
pub mod salesforce;
pub mod seed;
pub mod soql;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

pub use graph::GraphTenant;
pub use salesforce::SfOrg;

/// Credentials the emulators accept.
pub mod creds {
    /// Entra tenant domain.
    pub const TENANT: &str = "provisor-sim.onmicrosoft.com";
    /// Entra application (client) id.
    pub const ENTRA_CLIENT_ID: &str = "5f0c7a52-6a39-4e5b-9d4b-2b7f6b1f0a11";
    /// Entra client secret value.
    pub const ENTRA_CLIENT_SECRET: &str = "sim-entra-secret";
    /// Salesforce consumer key.
    pub const SF_CLIENT_ID: &str = "3MVG9SIM.provisor.consumer.key";
    /// Salesforce consumer secret.
    pub const SF_CLIENT_SECRET: &str = "sim-salesforce-secret";
    /// The integration user the client-credentials flow runs as, and the
    /// JWT bearer / password / SOAP login user.
    pub const SF_INTEGRATION_USERNAME: &str = "integration@provisor-sim.example";
    /// The integration user's password (password flow and SOAP login).
    pub const SF_PASSWORD: &str = "sim-password";
    /// Its security token, appended to the password.
    pub const SF_SECURITY_TOKEN: &str = "SIMTOKEN42";
}

/// Faults injected into API responses (never into `/_sim/`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Added latency per API request.
    pub latency_ms: u64,
    /// Probability that an API request fails with 503.
    pub fail_rate: f64,
    /// After this many more Graph delta pages are served, every delta
    /// request fails with 503 until the fault is cleared.
    pub graph_delta_fail_after_pages: Option<u64>,
    /// After this many more Salesforce write calls succeed, writes fail
    /// with 500 until the fault is cleared.
    pub sf_write_fail_after: Option<u64>,
    /// With `sf_write_fail_after`: perform the write, then answer 500 as if
    /// the response were lost on the way back.
    pub sf_write_fail_after_commit: bool,
    /// Probability that a Graph request is throttled (429 + `Retry-After`).
    pub throttle_rate: f64,
    /// `Retry-After` seconds sent with injected 429s (default 1).
    pub throttle_retry_after_secs: f64,
    /// The next this-many delta requests that carry a skip or delta token
    /// answer 410 Gone (`resyncRequired`, with `Location`), as after a
    /// service-side reset.
    pub graph_gone_next: u32,
    /// After this many more delta pages, the next delta request that
    /// carries a token answers 410 Gone once (a reset in mid-round).
    pub graph_gone_after_pages: Option<u64>,
    /// The next this-many records written through sObject Collections fail
    /// with `UNABLE_TO_LOCK_ROW` (row contention), each on its own.
    pub sf_lock_rows: u32,
    /// The next this-many authenticated Salesforce REST calls answer 403
    /// `REQUEST_LIMIT_EXCEEDED` "ConcurrentRequests" (the org's limit on
    /// long-running requests in flight), without being carried out.
    pub sf_concurrent_limit_next: u32,
    /// The next this-many `users/delta` requests with a `$skiptoken`
    /// answer an empty page whose nextLink is the request again (a service
    /// paging without progress).
    pub graph_stall_next: u32,
    /// Which delta resource (`users` or `groups`) the 410 and 503 delta
    /// faults above hit; both when unset. The engine reads both side by
    /// side, so a test that wants one of them names it.
    pub graph_fault_resource: Option<String>,
}

/// Counters the tests and the demo read back (`GET /_sim/stats`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stats {
    pub graph_token_calls: u64,
    pub graph_calls: u64,
    pub graph_delta_pages: u64,
    pub sf_token_calls: u64,
    pub sf_api_calls: u64,
    /// REST calls that write (POST/PATCH/DELETE other than queries).
    pub sf_write_calls: u64,
    /// Records written through those calls.
    pub sf_records_written: u64,
    /// Most Salesforce REST requests seen in flight at once.
    pub sf_max_in_flight: u64,
    /// Salesforce REST calls by kind: method and path shape for reads
    /// (`GET query`), method, shape and sObject for writes
    /// (`POST composite/sobjects User`).
    pub sf_calls_by_kind: std::collections::BTreeMap<String, u64>,
    /// Records written, by the same write kinds.
    pub sf_records_by_kind: std::collections::BTreeMap<String, u64>,
}

/// Options for a simulated tenant and org.
#[derive(Debug, Clone)]
pub struct SimOptions {
    pub users: usize,
    pub seed: u64,
    pub faults: Faults,
    /// Share of enabled member users (0.0 to 1.0) who already have a
    /// Salesforce user, half matched by Federation ID and half by Username
    /// only, besides the five fixed ones.
    pub existing_share: f64,
}

impl Default for SimOptions {
    fn default() -> Self {
        Self {
            users: 40,
            seed: 7,
            faults: Faults::default(),
            existing_share: 0.0,
        }
    }
}

/// The emulators' shared state.
pub struct SimState {
    graph: Mutex<GraphTenant>,
    sf: Mutex<SfOrg>,
    faults: Mutex<Faults>,
    stats: Mutex<Stats>,
    rng: Mutex<rand::rngs::StdRng>,
    sf_in_flight: std::sync::atomic::AtomicU64,
}

/// A handle to the emulators; cheap to clone.
#[derive(Clone)]
pub struct Sim(Arc<SimState>);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves consistent-enough state for an
    // emulator; keep serving rather than cascading the panic.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Sim {
    /// A tenant of `opts.users` generated users and an org seeded to match.
    pub fn new(opts: SimOptions) -> Self {
        let tenant = seed::tenant(opts.users, opts.seed);
        let org = seed::org(&tenant, opts.seed, opts.existing_share);
        Self(Arc::new(SimState {
            graph: Mutex::new(tenant),
            sf: Mutex::new(org),
            faults: Mutex::new(opts.faults),
            stats: Mutex::new(Stats::default()),
            rng: Mutex::new(rand::rngs::StdRng::seed_from_u64(opts.seed)),
            sf_in_flight: std::sync::atomic::AtomicU64::new(0),
        }))
    }

    /// The Graph tenant, for direct changes by tests and the demo.
    pub fn graph(&self) -> MutexGuard<'_, GraphTenant> {
        lock(&self.0.graph)
    }

    /// The Salesforce org, for direct inspection by tests and the demo.
    pub fn salesforce(&self) -> MutexGuard<'_, SfOrg> {
        lock(&self.0.sf)
    }

    /// Replaces the injected faults.
    pub fn set_faults(&self, faults: Faults) {
        *lock(&self.0.faults) = faults;
    }

    /// Current counters.
    pub fn stats(&self) -> Stats {
        lock(&self.0.stats).clone()
    }

    pub(crate) fn stats_mut(&self) -> MutexGuard<'_, Stats> {
        lock(&self.0.stats)
    }

    /// The faults now in force (count-down ones show what is left).
    pub fn current_faults(&self) -> Faults {
        self.faults().clone()
    }

    pub(crate) fn faults(&self) -> MutexGuard<'_, Faults> {
        lock(&self.0.faults)
    }

    /// True with probability `p` (seeded, for injected faults).
    pub(crate) fn chance(&self, p: f64) -> bool {
        lock(&self.0.rng).random_bool(p.clamp(0.0, 1.0))
    }

    /// The axum router serving both clouds and the admin API.
    pub fn router(&self) -> Router {
        Router::new()
            .merge(graph::routes())
            .merge(salesforce::routes())
            .merge(admin::routes())
            .layer(middleware::from_fn_with_state(self.clone(), fault_layer))
            .with_state(self.clone())
    }

    /// Serves HTTPS on `addr` with `cert` (see [`SimCertificate`]), so
    /// that Salesforce and Graph client libraries that insist on TLS can be
    /// pointed at the emulators.
    pub async fn serve_tls(
        &self,
        addr: SocketAddr,
        cert: &SimCertificate,
    ) -> std::io::Result<RunningSim> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let config = axum_server::tls_rustls::RustlsConfig::from_pem(
            cert.cert_pem.clone().into_bytes(),
            cert.key_pem.clone().into_bytes(),
        )
        .await?;
        // Links the emulators hand out (nextLink, instance_url...) must say
        // https: the same header a TLS-terminating proxy would set.
        let router = self.router().layer(middleware::from_fn(
            |mut req: Request, next: Next| async move {
                req.headers_mut()
                    .insert("x-forwarded-proto", HeaderValue::from_static("https"));
                next.run(req).await
            },
        ));
        let server = axum_server::from_tcp_rustls(listener, config)?;
        let task = tokio::spawn(async move {
            let _ = server.serve(router.into_make_service()).await;
        });
        let notifier = tokio::spawn(graph::dispatch_notifications(self.clone()));
        Ok(RunningSim {
            sim: self.clone(),
            addr,
            scheme: "https",
            task,
            notifier,
        })
    }

    /// Serves on `addr` (port 0 picks a free one) until the task is dropped.
    pub async fn serve(&self, addr: SocketAddr) -> std::io::Result<RunningSim> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let router = self.router();
        let task = tokio::spawn(async move {
            // Errors here mean the listener died; the tests notice via
            // connection errors, which name the address.
            let _ = axum::serve(listener, router).await;
        });
        let notifier = tokio::spawn(graph::dispatch_notifications(self.clone()));
        Ok(RunningSim {
            sim: self.clone(),
            addr,
            scheme: "http",
            task,
            notifier,
        })
    }
}

/// A self-signed certificate for `localhost` and `127.0.0.1`, made at
/// start-up for `provisor sim --tls`. Clients trust it through its PEM
/// (`[tls] ca_files` for provisor itself).
pub struct SimCertificate {
    /// The certificate, PEM.
    pub cert_pem: String,
    key_pem: String,
}

impl SimCertificate {
    /// Generates a fresh key pair and certificate.
    pub fn generate() -> Result<Self, rcgen::Error> {
        let ck = rcgen::generate_simple_self_signed(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
        ])?;
        Ok(Self {
            cert_pem: ck.cert.pem(),
            key_pem: ck.signing_key.serialize_pem(),
        })
    }
}

/// The scheme and host the client used, for links handed back to it.
pub(crate) fn base_url(headers: &axum::http::HeaderMap) -> String {
    let get = |k: &str| headers.get(k).and_then(|v| v.to_str().ok());
    let scheme = match get("x-forwarded-proto") {
        Some("https") => "https",
        _ => "http",
    };
    format!("{scheme}://{}", get("host").unwrap_or("localhost"))
}

/// A sim listening on a socket.
pub struct RunningSim {
    pub sim: Sim,
    pub addr: SocketAddr,
    /// `http`, or `https` when serving TLS.
    pub scheme: &'static str,
    task: tokio::task::JoinHandle<()>,
    notifier: tokio::task::JoinHandle<()>,
}

impl RunningSim {
    /// `http://127.0.0.1:PORT` (`https://` when serving TLS).
    pub fn base_url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// A provisor config (TOML) pointing at this sim.
    pub fn config_toml(&self, pack: &str, store_url: &str) -> String {
        config_toml(&self.base_url(), pack, store_url)
    }
}

impl Drop for RunningSim {
    fn drop(&mut self) {
        self.task.abort();
        self.notifier.abort();
    }
}

/// A ready provisor config for a sim at `base`.
pub fn config_toml(base: &str, pack: &str, store_url: &str) -> String {
    format!(
        r#"# provisor config for the emulators at {base} (`provisor sim`).
# Inline `value` secrets are for emulators only: use {{ env = "VAR" }} or
# {{ file = "path" }} for a real tenant and org.

[entra]
tenant = "{tenant}"
client_id = "{eid}"
client_secret = {{ value = "{esec}" }}
authority = "{base}"
graph_url = "{base}"

[salesforce]
login_url = "{base}"
api_version = "62.0"
client_id = "{sid}"
client_secret = {{ value = "{ssec}" }}

[store]
url = "{store_url}"

[rules]
pack = "{pack}"
"#,
        tenant = creds::TENANT,
        eid = creds::ENTRA_CLIENT_ID,
        esec = creds::ENTRA_CLIENT_SECRET,
        sid = creds::SF_CLIENT_ID,
        ssec = creds::SF_CLIENT_SECRET,
    )
}

/// `GET /services/data/v62.0/query/0r8...-2000` → `GET query/{locator}`:
/// the path after the version with ids and locators folded; a query
/// names its sObject (`GET query User`).
fn read_kind(path: &str, query: Option<&str>) -> String {
    let from = query
        .and_then(|q| url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "q"))
        .and_then(|(_, soql)| {
            let words: Vec<String> = soql.split_whitespace().map(str::to_string).collect();
            let i = words.iter().position(|w| w.eq_ignore_ascii_case("from"))?;
            words.get(i + 1).cloned()
        });
    let rest = path
        .strip_prefix("/services/data/")
        .and_then(|p| p.split_once('/'))
        .map_or(path, |(_, r)| r);
    let shape: Vec<&str> = rest
        .split('/')
        .enumerate()
        .map(|(i, seg)| match (i, seg) {
            (0, s) => s,
            (_, s) if s.len() >= 15 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') => {
                "{id}"
            }
            (_, s) => s,
        })
        .collect();
    match from {
        Some(object) => format!("GET {} {object}", shape.join("/")),
        None => format!("GET {}", shape.join("/")),
    }
}

/// Latency and random failures for API paths; `/_sim/` is never touched.
async fn fault_layer(State(sim): State<Sim>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    if path.starts_with("/_sim/") {
        return next.run(req).await;
    }
    // Salesforce refuses request URIs over 16,384 bytes (queries travel in
    // the URL), before anything else.
    if path.starts_with("/services/") {
        let len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
        if len > 16_384 {
            return (
                StatusCode::URI_TOO_LONG,
                format!("URI Too Long: {len} bytes, at most 16384"),
            )
                .into_response();
        }
    }
    let (latency, fail_rate) = {
        let f = sim.faults();
        (f.latency_ms, f.fail_rate)
    };
    // Count concurrent Salesforce REST calls (tests check the client's bound).
    let sf = path.starts_with("/services/data/v");
    if sf {
        let now = sim
            .0
            .sf_in_flight
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        let mut stats = sim.stats_mut();
        stats.sf_max_in_flight = stats.sf_max_in_flight.max(now);
        if req.method() == axum::http::Method::GET {
            let kind = read_kind(&path, req.uri().query());
            *stats.sf_calls_by_kind.entry(kind).or_default() += 1;
        }
    }
    let resp = serve_with_faults(&sim, &path, latency, fail_rate, req, next).await;
    if sf {
        sim.0
            .sf_in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
    resp
}

async fn serve_with_faults(
    sim: &Sim,
    path: &str,
    latency: u64,
    fail_rate: f64,
    req: Request,
    next: Next,
) -> Response {
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    let is_token = path.ends_with("/token");
    if fail_rate > 0.0 && !is_token && sim.chance(fail_rate) {
        return if path.starts_with("/services/") {
            salesforce::error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "SERVER_UNAVAILABLE",
                "Service temporarily unavailable (injected fault)",
                &[],
            )
        } else {
            graph::error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "serviceNotAvailable",
                "The service is temporarily unavailable (injected fault).",
                None,
            )
        };
    }
    next.run(req).await
}

/// Adds a header, ignoring values that cannot be headers (never the case for
/// the ASCII values the emulators produce).
pub(crate) fn set_header(resp: &mut Response, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().insert(name, v);
    }
}

/// JSON response helper.
pub(crate) fn json(status: StatusCode, body: serde_json::Value) -> Response {
    (status, axum::Json(body)).into_response()
}
