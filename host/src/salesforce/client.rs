use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use reqwest::Method;
use serde_json::{Map, Value, json};
use tokio::sync::Mutex;

use crate::config::{SalesforceConfig, SecretString};
use crate::http::RetryPolicy;

/// One error item from Salesforce (`errorCode` at top level, `statusCode`
/// per record in Collections results).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ApiError {
    pub code: String,
    pub message: String,
    pub fields: Vec<String>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)?;
        if !self.fields.is_empty() {
            write!(f, " [{}]", self.fields.join(", "))?;
        }
        Ok(())
    }
}

/// Errors talking to Salesforce; each names the URL at fault.
#[derive(Debug, thiserror::Error)]
pub enum SfError {
    #[error("Salesforce token endpoint {url} refused the credentials: {error}: {description}")]
    Auth {
        url: String,
        error: String,
        description: String,
    },
    #[error("Salesforce {method} {url} answered HTTP {status}: {}", .errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Api {
        method: String,
        url: String,
        status: u16,
        errors: Vec<ApiError>,
    },
    #[error("cannot reach {url}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("malformed response from {url}: {detail}")]
    Malformed { url: String, detail: String },
    #[error("Salesforce credential: {detail}")]
    Credential { detail: String },
    #[error("Salesforce API usage is at {used}/{max} ({pct:.1}%), at or above the configured stop share: writes paused until usage drops", pct = (*.used as f64) * 100.0 / (*.max as f64).max(1.0))]
    LimitFloor { used: u64, max: u64 },
    /// Most of a batch failed for one cause: writing on would only burn
    /// API calls on the same error.
    #[error(
        "writes paused (quarantine): {failed} of {of} records in one batch failed with {code}: {message}"
    )]
    Quarantined {
        code: String,
        failed: usize,
        of: usize,
        message: String,
    },
}

impl SfError {
    /// True when the org's API allocation stops the work: the configured
    /// floor, or Salesforce's own `REQUEST_LIMIT_EXCEEDED` for the day.
    /// Nothing was done; retry when usage drops.
    pub fn is_limit(&self) -> bool {
        match self {
            Self::LimitFloor { .. } => true,
            Self::Api { errors, .. } => errors.iter().any(|e| {
                e.code == "REQUEST_LIMIT_EXCEEDED" && !e.message.contains("ConcurrentRequests")
            }),
            _ => false,
        }
    }

    /// True when the request may have been carried out even though no
    /// answer says so (lost response, 5xx): the caller must look before
    /// repeating a create.
    pub fn outcome_unknown(&self) -> bool {
        match self {
            Self::Transport { .. } => true,
            Self::Api { status, .. } => *status >= 500,
            _ => false,
        }
    }
}

/// One record's result from an sObject Collections call.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordResult {
    pub id: Option<String>,
    pub success: bool,
    pub errors: Vec<ApiError>,
}

impl RecordResult {
    /// The record's errors as one line, `CODE: message [fields]; ...`.
    pub fn error_text(&self) -> String {
        self.errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// API usage as reported by `Sforce-Limit-Info: api-usage=used/max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LimitInfo {
    pub used: u64,
    pub max: u64,
}

/// A request body for [`SalesforceClient::send`].
#[derive(Clone, Copy)]
pub(super) enum Body<'a> {
    None,
    Json(&'a Value),
    /// Raw text such as a Bulk API CSV upload.
    Text {
        content_type: &'a str,
        text: &'a str,
    },
}

struct Session {
    token: SecretString,
    instance_url: String,
    /// The integration user's id, from the identity URL or SOAP `userId`.
    user_id: Option<String>,
}

/// REST client for one org.
pub struct SalesforceClient {
    http: reqwest::Client,
    cfg: SalesforceConfig,
    creds: Credentials,
    retry: RetryPolicy,
    session: Mutex<Option<Session>>,
    used: AtomicU64,
    max: AtomicU64,
}

/// How provisor authenticates to Salesforce (secrets resolved).
pub enum Credentials {
    JwtBearer {
        username: String,
        key: jsonwebtoken::EncodingKey,
    },
    ClientCredentials {
        secret: SecretString,
    },
    Password {
        secret: SecretString,
        username: String,
        password: SecretString,
    },
    Soap {
        username: String,
        password: SecretString,
    },
}

impl From<SecretString> for Credentials {
    fn from(secret: SecretString) -> Self {
        Self::ClientCredentials { secret }
    }
}

impl Credentials {
    /// Resolves the secrets the configured flow needs; errors name the key.
    pub fn from_config(cfg: &crate::config::SalesforceConfig) -> Result<Self, SfError> {
        use crate::config::SfAuthFlow;
        let bad = |detail: String| SfError::Credential { detail };
        let get = |s: &Option<crate::config::Secret>, key: &str| -> Result<SecretString, SfError> {
            s.as_ref()
                .ok_or_else(|| bad(format!("salesforce.{key} is required")))?
                .resolve(&format!("salesforce.{key}"))
                .map_err(|e| bad(e.to_string()))
        };
        let username = || {
            cfg.username
                .clone()
                .ok_or_else(|| bad("salesforce.username is required".into()))
        };
        // Password plus security token, as Salesforce expects them joined.
        let password = || -> Result<SecretString, SfError> {
            let p = get(&cfg.password, "password")?;
            let t = match &cfg.security_token {
                Some(_) => get(&cfg.security_token, "security_token")?
                    .expose()
                    .to_string(),
                None => String::new(),
            };
            Ok(SecretString::new(format!("{}{t}", p.expose())))
        };
        Ok(match cfg.flow() {
            SfAuthFlow::JwtBearer => {
                let pem = get(&cfg.private_key, "private_key")?;
                let key = jsonwebtoken::EncodingKey::from_rsa_pem(pem.expose().as_bytes())
                    .map_err(|e| {
                        bad(format!("salesforce.private_key is not an RSA PEM key: {e}"))
                    })?;
                Self::JwtBearer {
                    username: username()?,
                    key,
                }
            }
            SfAuthFlow::ClientCredentials => Self::ClientCredentials {
                secret: get(&cfg.client_secret, "client_secret")?,
            },
            SfAuthFlow::Password => Self::Password {
                secret: get(&cfg.client_secret, "client_secret")?,
                username: username()?,
                password: password()?,
            },
            SfAuthFlow::Soap => Self::Soap {
                username: username()?,
                password: password()?,
            },
        })
    }
}

/// Text of the first element with each local name (namespace prefixes ignored).
pub(crate) fn xml_fields(xml: &str, names: &[&str]) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut current: Option<String> = None;
    loop {
        match reader.read_event() {
            Ok(quick_xml::events::Event::Start(e)) => {
                let local = String::from_utf8_lossy(e.local_name().as_ref()).to_string();
                current = names.contains(&local.as_str()).then_some(local);
            }
            Ok(quick_xml::events::Event::Text(t)) => {
                if let Some(name) = current.take()
                    && let Ok(text) = t.decode()
                {
                    out.entry(name).or_insert_with(|| {
                        quick_xml::escape::unescape(&text)
                            .map(|c| c.to_string())
                            .unwrap_or_else(|_| text.to_string())
                    });
                }
            }
            Ok(quick_xml::events::Event::End(_)) => current = None,
            Ok(quick_xml::events::Event::Eof) | Err(_) => break,
            _ => {}
        }
    }
    out
}

/// One entry of a Collections result array (`statusCode` per error).
fn record_result(r: &Value) -> RecordResult {
    RecordResult {
        id: r.get("id").and_then(Value::as_str).map(str::to_string),
        success: r.get("success").and_then(Value::as_bool).unwrap_or(false),
        errors: parse_errors(r.get("errors").unwrap_or(&Value::Null), "statusCode"),
    }
}

/// Quotes a value for a SOQL string literal (o'brien@... stays one value).
pub fn soql_quote(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 2);
    out.push('\'');
    for c in v.chars() {
        match c {
            '\'' => out.push_str("\\'"),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

fn parse_errors(body: &Value, key: &str) -> Vec<ApiError> {
    body.as_array()
        .map(|a| {
            a.iter()
                .map(|e| ApiError {
                    code: e
                        .get(key)
                        .or_else(|| e.get("errorCode"))
                        .and_then(Value::as_str)
                        .unwrap_or("UNKNOWN")
                        .to_string(),
                    message: e
                        .get("message")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    fields: e
                        .get("fields")
                        .and_then(Value::as_array)
                        .map(|f| {
                            f.iter()
                                .filter_map(|x| x.as_str().map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default()
}

impl SalesforceClient {
    /// A client; authentication happens on the first call.
    pub fn new(
        http: reqwest::Client,
        cfg: SalesforceConfig,
        creds: impl Into<Credentials>,
        retry: RetryPolicy,
    ) -> Self {
        Self {
            http,
            cfg,
            creds: creds.into(),
            retry,
            session: Mutex::new(None),
            used: AtomicU64::new(0),
            max: AtomicU64::new(0),
        }
    }

    /// Last API usage Salesforce reported.
    pub fn limit_info(&self) -> LimitInfo {
        LimitInfo {
            used: self.used.load(Ordering::Relaxed),
            max: self.max.load(Ordering::Relaxed),
        }
    }

    pub(super) fn data_path(&self) -> String {
        format!("/services/data/v{}", self.cfg.api_version)
    }

    async fn login(&self) -> Result<Session, SfError> {
        let base = self.cfg.login_url.trim_end_matches('/');
        let url = format!("{base}/services/oauth2/token");
        let mut form: Vec<(&str, String)> = Vec::new();
        match &self.creds {
            Credentials::JwtBearer { username, key } => {
                // exp within 3 minutes, in seconds (milliseconds is a classic bug).
                let claims = json!({"iss": self.cfg.client_id, "sub": username, "aud": base, "exp": chrono::Utc::now().timestamp() + 170});
                let jwt = jsonwebtoken::encode(
                    &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
                    &claims,
                    key,
                )
                .map_err(|e| SfError::Credential {
                    detail: format!("cannot sign the JWT bearer assertion: {e}"),
                })?;
                form.push((
                    "grant_type",
                    "urn:ietf:params:oauth:grant-type:jwt-bearer".into(),
                ));
                form.push(("assertion", jwt));
            }
            Credentials::ClientCredentials { secret } => {
                form.push(("grant_type", "client_credentials".into()));
                form.push(("client_id", self.cfg.client_id.clone()));
                form.push(("client_secret", secret.expose().into()));
            }
            Credentials::Password {
                secret,
                username,
                password,
            } => {
                tracing::warn!(
                    "Salesforce username-password flow: legacy, blocked by default in newer orgs and broken by every password reset; use jwt_bearer"
                );
                form.push(("grant_type", "password".into()));
                form.push(("client_id", self.cfg.client_id.clone()));
                form.push(("client_secret", secret.expose().into()));
                form.push(("username", username.clone()));
                form.push(("password", password.expose().into()));
            }
            Credentials::Soap { username, password } => {
                return self.soap_login(base, username, password).await;
            }
        }
        let resp = self
            .retry
            .send(true, || self.http.post(&url).form(&form))
            .await
            .map_err(|source| SfError::Transport {
                url: url.clone(),
                source: source.without_url(),
            })?;
        let status = resp.status();
        let body: Value = resp.json().await.map_err(|e| SfError::Malformed {
            url: url.clone(),
            detail: format!("token response is not JSON: {e}"),
        })?;
        let s = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
        if !status.is_success() {
            return Err(SfError::Auth {
                url,
                error: s("error").unwrap_or_default(),
                description: s("error_description").unwrap_or_default(),
            });
        }
        let token = s("access_token").ok_or_else(|| SfError::Malformed {
            url: url.clone(),
            detail: "no access_token".into(),
        })?;
        let instance_url = s("instance_url").ok_or_else(|| SfError::Malformed {
            url: url.clone(),
            detail: "no instance_url".into(),
        })?;
        // The identity URL ends in /id/<orgId>/<userId>.
        let user_id = s("id").and_then(|i| i.rsplit('/').next().map(str::to_string));
        Ok(Session {
            token: SecretString::new(token),
            instance_url,
            user_id,
        })
    }

    /// SOAP `login()` (partner API): the session id works as a REST bearer
    /// token; the instance is the scheme and host of `serverUrl`.
    async fn soap_login(
        &self,
        base: &str,
        username: &str,
        password: &SecretString,
    ) -> Result<Session, SfError> {
        tracing::warn!(
            "Salesforce SOAP login(): retired (not in API v65.0+, removed for v31.0-64.0 in Summer '27); use jwt_bearer"
        );
        let url = format!("{base}/services/Soap/u/{}", self.cfg.api_version);
        let envelope = format!(
            r#"<?xml version="1.0" encoding="utf-8"?><env:Envelope xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:env="http://schemas.xmlsoap.org/soap/envelope/"><env:Body><n1:login xmlns:n1="urn:partner.soap.sforce.com"><n1:username>{}</n1:username><n1:password>{}</n1:password></n1:login></env:Body></env:Envelope>"#,
            quick_xml::escape::escape(username),
            quick_xml::escape::escape(password.expose())
        );
        let resp = self
            .retry
            .send(true, || {
                self.http
                    .post(&url)
                    .header("Content-Type", "text/xml; charset=UTF-8")
                    .header("SOAPAction", "login")
                    .body(envelope.clone())
            })
            .await
            .map_err(|source| SfError::Transport {
                url: url.clone(),
                source: source.without_url(),
            })?;
        let text = resp.text().await.map_err(|source| SfError::Transport {
            url: url.clone(),
            source: source.without_url(),
        })?;
        let fields = xml_fields(
            &text,
            &[
                "sessionId",
                "serverUrl",
                "faultcode",
                "faultstring",
                "exceptionCode",
            ],
        );
        if let (Some(session), Some(server)) = (fields.get("sessionId"), fields.get("serverUrl")) {
            let parsed = url::Url::parse(server).map_err(|e| SfError::Malformed {
                url: url.clone(),
                detail: format!("serverUrl is not a URL: {e}"),
            })?;
            let instance_url = parsed.origin().ascii_serialization();
            let user_id = xml_fields(&text, &["userId"]).remove("userId");
            return Ok(Session {
                token: SecretString::new(session.clone()),
                instance_url,
                user_id,
            });
        }
        Err(SfError::Auth {
            url,
            error: fields
                .get("exceptionCode")
                .or(fields.get("faultcode"))
                .cloned()
                .unwrap_or_else(|| "SOAP_FAULT".into()),
            description: fields
                .get("faultstring")
                .cloned()
                .unwrap_or_else(|| "login() failed without a fault string".into()),
        })
    }

    /// Calls `path` (absolute path on the instance, e.g. from
    /// `nextRecordsUrl`), re-authenticating once on 401 INVALID_SESSION_ID.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        extra: &[(&str, &str)],
    ) -> Result<Value, SfError> {
        let body = body.map_or(Body::None, Body::Json);
        let (url, status, text) = self.send(method, path, body, extra).await?;
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| SfError::Malformed {
            url,
            detail: format!("HTTP {status}, body is not JSON ({e})"),
        })
    }

    /// The one request path: limit pacing, session, retries, re-login and
    /// error bodies. Returns the URL, status and body text of a success.
    pub(super) async fn send(
        &self,
        method: Method,
        path: &str,
        body: Body<'_>,
        extra: &[(&str, &str)],
    ) -> Result<(String, u16, String), SfError> {
        let idempotent = method != Method::POST;
        let mut relogged = false;
        let mut concurrency_retries = 0u32;
        loop {
            // Be polite to the org's daily allocation: pace calls above the
            // throttle share, and stop writing at the stop share.
            let LimitInfo { used, max } = self.limit_info();
            if max > 0 {
                let share = used as f64 / max as f64;
                if method != Method::GET && share >= self.cfg.stop_share {
                    return Err(SfError::LimitFloor { used, max });
                }
                if share >= self.cfg.throttle_share {
                    let span = (self.cfg.stop_share - self.cfg.throttle_share).max(f64::EPSILON);
                    let pause = std::time::Duration::from_millis(
                        (self.cfg.pace_max_ms as f64
                            * ((share - self.cfg.throttle_share) / span).min(1.0))
                            as u64,
                    );
                    tracing::debug!(
                        ?pause,
                        used,
                        max,
                        "pacing Salesforce calls near the daily limit"
                    );
                    tokio::time::sleep(pause).await;
                }
            }
            let (token, base) = {
                let mut guard = self.session.lock().await;
                if guard.is_none() || relogged {
                    *guard = Some(self.login().await?);
                }
                let s = guard.as_ref().ok_or_else(|| SfError::Malformed {
                    url: path.into(),
                    detail: "no session".into(),
                })?;
                (s.token.clone(), s.instance_url.clone())
            };
            let url = format!("{}{}", base.trim_end_matches('/'), path);
            let resp = self
                .retry
                .send(idempotent, || {
                    let mut rb = self
                        .http
                        .request(method.clone(), &url)
                        .bearer_auth(token.expose());
                    if !extra.iter().any(|(k, _)| k.eq_ignore_ascii_case("accept")) {
                        rb = rb.header("Accept", "application/json");
                    }
                    for (k, v) in extra {
                        rb = rb.header(*k, *v);
                    }
                    match body {
                        Body::None => rb,
                        Body::Json(b) => rb.json(b),
                        Body::Text { content_type, text } => rb
                            .header("Content-Type", content_type)
                            .body(text.to_string()),
                    }
                })
                .await
                .map_err(|source| SfError::Transport {
                    url: url.clone(),
                    source: source.without_url(),
                })?;
            if let Some((used, max)) = resp
                .headers()
                .get("sforce-limit-info")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().strip_prefix("api-usage="))
                .and_then(|v| v.split_once('/'))
                && let (Ok(u), Ok(m)) = (used.trim().parse(), max.trim().parse())
            {
                self.used.store(u, Ordering::Relaxed);
                self.max.store(m, Ordering::Relaxed);
            }
            let status = resp.status();
            let text = resp.text().await.map_err(|source| SfError::Transport {
                url: url.clone(),
                source: source.without_url(),
            })?;
            if status.is_success() {
                return Ok((url, status.as_u16(), text));
            }
            let parsed: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let mut errors = parse_errors(&parsed, "errorCode");
            if errors.is_empty() {
                errors.push(ApiError {
                    code: format!("HTTP_{}", status.as_u16()),
                    message: text.chars().take(300).collect(),
                    fields: vec![],
                });
            }
            if status.as_u16() == 403
                && concurrency_retries < self.retry.attempts
                && errors.iter().any(|e| {
                    e.code == "REQUEST_LIMIT_EXCEEDED" && e.message.contains("ConcurrentRequests")
                })
            {
                // Too many long-running requests at once: a short backoff helps.
                concurrency_retries += 1;
                tokio::time::sleep(
                    self.retry
                        .base
                        .saturating_mul(1 << concurrency_retries.min(8)),
                )
                .await;
                continue;
            }
            if status.as_u16() == 401
                && !relogged
                && errors.iter().any(|e| e.code == "INVALID_SESSION_ID")
            {
                relogged = true;
                continue;
            }
            return Err(SfError::Api {
                method: method.to_string(),
                url,
                status: status.as_u16(),
                errors,
            });
        }
    }

    /// The configured API version.
    pub fn api_version(&self) -> &str {
        &self.cfg.api_version
    }

    /// Logs in if needed and returns the integration user's id.
    pub async fn user_id(&self) -> Result<String, SfError> {
        let mut guard = self.session.lock().await;
        if guard.is_none() {
            *guard = Some(self.login().await?);
        }
        guard
            .as_ref()
            .and_then(|s| s.user_id.clone())
            .ok_or_else(|| SfError::Malformed {
                url: self.cfg.login_url.clone(),
                detail: "the login response named no user".into(),
            })
    }

    /// API versions the instance offers (`GET /services/data`), e.g. "62.0".
    pub async fn versions(&self) -> Result<Vec<String>, SfError> {
        let v = self.call(Method::GET, "/services/data", None, &[]).await?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.get("version")?.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// An object's describe (`GET /sobjects/{object}/describe`): its
    /// fields with type, `custom` and `referenceTo`.
    pub async fn describe(&self, object: &str) -> Result<Value, SfError> {
        let path = format!("{}/sobjects/{object}/describe", self.data_path());
        self.call(Method::GET, &path, None, &[]).await
    }

    /// Revokes a connected-app token by the `DeleteToken` an admin reads
    /// from `OauthToken` (`POST /services/oauth2/revoke`, form `token=`):
    /// `OauthToken` rows themselves cannot be deleted through the API.
    pub async fn revoke_token(&self, delete_token: &str) -> Result<(), SfError> {
        let form = format!(
            "token={}",
            url::form_urlencoded::byte_serialize(delete_token.as_bytes()).collect::<String>()
        );
        self.send(
            Method::POST,
            "/services/oauth2/revoke",
            Body::Text {
                content_type: "application/x-www-form-urlencoded",
                text: &form,
            },
            &[],
        )
        .await
        .map(|_| ())
    }

    /// Runs a SOQL query and follows `nextRecordsUrl` to the end.
    pub async fn query(&self, soql: &str) -> Result<Vec<Map<String, Value>>, SfError> {
        tracing::debug!(soql, "Salesforce query");
        let mut path = format!(
            "{}/query?q={}",
            self.data_path(),
            url::form_urlencoded::byte_serialize(soql.as_bytes()).collect::<String>()
        );
        let mut out = Vec::new();
        loop {
            let mut page = self
                .call(
                    Method::GET,
                    &path,
                    None,
                    &[("Sforce-Query-Options", "batchSize=2000")],
                )
                .await?;
            let Some(Value::Array(records)) = page.get_mut("records").map(Value::take) else {
                return Err(SfError::Malformed {
                    url: path.clone(),
                    detail: "query result has no records array".into(),
                });
            };
            // Each record's `attributes` (type and URL) is dropped: nothing
            // reads it, and a whole User table keeps one per row.
            out.extend(records.into_iter().filter_map(|r| match r {
                Value::Object(mut m) => {
                    m.remove("attributes");
                    Some(m)
                }
                _ => None,
            }));
            let done = page.get("done").and_then(Value::as_bool).unwrap_or(true);
            match page.get("nextRecordsUrl").and_then(Value::as_str) {
                Some(next) if !done => path = next.to_string(),
                _ => return Ok(out),
            }
        }
    }

    async fn collection(
        &self,
        method: Method,
        ty: &str,
        records: &[Map<String, Value>],
        headers: &[(&str, &str)],
    ) -> Result<Vec<RecordResult>, SfError> {
        let path = format!("{}/composite/sobjects", self.data_path());
        let recs: Vec<Value> = records
            .iter()
            .map(|r| {
                let mut r = r.clone();
                r.insert("attributes".into(), json!({"type": ty}));
                Value::Object(r)
            })
            .collect();
        let body = json!({"allOrNone": false, "records": recs});
        let resp = self.call(method, &path, Some(&body), headers).await?;
        let arr = resp.as_array().ok_or_else(|| SfError::Malformed {
            url: path.clone(),
            detail: "collection result is not an array".into(),
        })?;
        if arr.len() != records.len() {
            return Err(SfError::Malformed {
                url: path,
                detail: format!("{} results for {} records", arr.len(), records.len()),
            });
        }
        Ok(arr.iter().map(record_result).collect())
    }

    /// Creates up to 200 records of one type (`allOrNone=false`); results
    /// are in the order of `records`.
    pub async fn create_many(
        &self,
        ty: &str,
        records: &[Map<String, Value>],
    ) -> Result<Vec<RecordResult>, SfError> {
        self.collection(Method::POST, ty, records, &[]).await
    }

    /// Deletes up to 200 records by id (`allOrNone=false`), results in order.
    pub async fn delete_many(&self, ids: &[String]) -> Result<Vec<RecordResult>, SfError> {
        let path = format!(
            "{}/composite/sobjects?ids={}&allOrNone=false",
            self.data_path(),
            ids.join(",")
        );
        let resp = self.call(Method::DELETE, &path, None, &[]).await?;
        let arr = resp.as_array().ok_or_else(|| SfError::Malformed {
            url: path.clone(),
            detail: "delete result is not an array".into(),
        })?;
        if arr.len() != ids.len() {
            return Err(SfError::Malformed {
                url: path,
                detail: format!("{} results for {} ids", arr.len(), ids.len()),
            });
        }
        Ok(arr.iter().map(record_result).collect())
    }

    /// Updates up to 200 records of one type; each record carries `id`.
    pub async fn update_many(
        &self,
        ty: &str,
        records: &[Map<String, Value>],
    ) -> Result<Vec<RecordResult>, SfError> {
        self.collection(Method::PATCH, ty, records, &[]).await
    }

    /// [`SalesforceClient::update_many`] with request headers, e.g.
    /// `Sforce-Auto-Assign: FALSE` so that assignment rules do not run.
    pub async fn update_many_with(
        &self,
        ty: &str,
        records: &[Map<String, Value>],
        headers: &[(&str, &str)],
    ) -> Result<Vec<RecordResult>, SfError> {
        self.collection(Method::PATCH, ty, records, headers).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_soql_literals() {
        assert_eq!(soql_quote("o'brien@x.com"), r"'o\'brien@x.com'");
        assert_eq!(soql_quote(r"a\b"), r"'a\\b'");
    }
}
