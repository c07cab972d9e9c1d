use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::config::{EntraConfig, SecretString};
use crate::http::RetryPolicy;
use crate::model::{EntraUser, Removal};

/// Properties requested on `users/delta`: everything rules may read.
pub const USER_SELECT: &str = "id,userPrincipalName,mail,givenName,surname,displayName,department,jobTitle,employeeId,mobilePhone,businessPhones,preferredLanguage,userType,accountEnabled,manager";

/// User properties Graph delta cannot track: selecting one makes
/// `users/delta` answer 400 ("$expand/$select is not supported for the
/// following properties"), or the property lives outside the directory and
/// a change to it never surfaces the user. A pack may not read them.
pub const DELTA_UNTRACKABLE: &[(&str, &str)] = &[
    (
        "signInActivity",
        "Graph answers 400: $select is not supported for signInActivity on delta",
    ),
    (
        "birthday",
        "stored outside the directory: delta does not track it",
    ),
    (
        "skills",
        "stored outside the directory: delta does not track it",
    ),
    (
        "aboutMe",
        "stored outside the directory: delta does not track it",
    ),
    (
        "interests",
        "stored outside the directory: delta does not track it",
    ),
    (
        "mySite",
        "stored outside the directory: delta does not track it",
    ),
    (
        "pastProjects",
        "stored outside the directory: delta does not track it",
    ),
    (
        "preferredName",
        "stored outside the directory: delta does not track it",
    ),
    (
        "responsibilities",
        "stored outside the directory: delta does not track it",
    ),
    (
        "schools",
        "stored outside the directory: delta does not track it",
    ),
    (
        "hireDate",
        "stored outside the directory: delta does not track it",
    ),
    (
        "photo",
        "a navigation property: changes never trigger delta",
    ),
    (
        "licenseDetails",
        "a navigation property: changes never trigger delta",
    ),
    (
        "memberOf",
        "a navigation property: read group membership from groups/delta",
    ),
    ("appRoleAssignments", "not tracked by users/delta"),
];

/// Why Graph delta cannot track `attribute`, if it cannot.
pub fn untrackable(attribute: &str) -> Option<&'static str> {
    DELTA_UNTRACKABLE
        .iter()
        .find(|(a, _)| a.eq_ignore_ascii_case(attribute))
        .map(|(_, why)| *why)
}

/// The `$select` of a users round: [`USER_SELECT`], then `extra`
/// attributes (configured extension attributes, what packs read) not in
/// it yet, sorted, each once.
pub fn users_select(extra: &[String]) -> String {
    let base: Vec<&str> = USER_SELECT.split(',').collect();
    let mut more: Vec<&str> = extra
        .iter()
        .map(String::as_str)
        .filter(|a| !base.contains(a))
        .collect();
    more.sort_unstable();
    more.dedup();
    let mut select = USER_SELECT.to_string();
    for a in more {
        select.push(',');
        select.push_str(a);
    }
    select
}

/// Errors talking to Entra ID; each names what failed.
#[derive(Debug, thiserror::Error)]
pub enum EntraError {
    #[error(
        "Entra token endpoint {url} refused the client credentials: {error} (AADSTS{codes}): {description}"
    )]
    Auth {
        url: String,
        error: String,
        codes: String,
        description: String,
    },
    #[error("Graph {url} answered HTTP {status} {code}: {message} (request-id {request_id})")]
    Graph {
        url: String,
        status: u16,
        code: String,
        message: String,
        request_id: String,
        /// `Location` of a 410 Gone: where a fresh round starts.
        location: Option<String>,
    },
    #[error("cannot reach {url}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("malformed response from {url}: {detail}")]
    Malformed { url: String, detail: String },
    #[error("Entra certificate credential: {detail}")]
    Credential { detail: String },
    #[error("Graph delta round stalled at {url}: {detail}")]
    Stalled { url: String, detail: String },
}

impl EntraError {
    /// True when the delta state is gone and only a full resync helps:
    /// 410 Gone, or `syncStateNotFound` / `resyncRequired` in the body.
    pub fn needs_resync(&self) -> bool {
        match self {
            Self::Graph { status, code, .. } => {
                *status == 410
                    || code.eq_ignore_ascii_case("syncStateNotFound")
                    || code.eq_ignore_ascii_case("resyncRequired")
            }
            _ => false,
        }
    }
}

/// A change to one user from a delta page.
// Pages hold a few hundred of these briefly; boxing would not pay.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum UserChange {
    /// Created, updated or restored: the user's selected properties.
    Upsert(EntraUser),
    /// `@removed` with its reason.
    Removed { id: String, removal: Removal },
}

/// A change to one group from a delta page (members are direct members).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GroupChange {
    pub id: String,
    pub display_name: Option<String>,
    pub removed: bool,
    /// Users added as direct members.
    pub members_added: Vec<String>,
    /// Users removed as direct members.
    pub members_removed: Vec<String>,
    /// Groups added as direct (nested) members.
    pub groups_added: Vec<String>,
    /// Groups removed as direct (nested) members.
    pub groups_removed: Vec<String>,
}

/// One delta page.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub changes: Vec<T>,
    /// `@odata.nextLink`: more pages in this round.
    pub next_link: Option<String>,
    /// `@odata.deltaLink`: the round is complete.
    pub delta_link: Option<String>,
    /// Graph's `request-id`, kept with the changes for support cases.
    pub request_id: String,
}

struct Token {
    value: SecretString,
    refresh_at: Instant,
}

/// How the app proves who it is to the token endpoint.
pub enum Credential {
    /// A client secret value.
    Secret(SecretString),
    /// A certificate: assertions are signed with its private key and name
    /// it by `x5t#S256` (base64url SHA-256 of the certificate's DER).
    Certificate {
        thumbprint_s256: String,
        key: jsonwebtoken::EncodingKey,
    },
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Secret(_) => f.write_str("Credential::Secret(<redacted>)"),
            Self::Certificate {
                thumbprint_s256, ..
            } => write!(f, "Credential::Certificate(x5t#S256={thumbprint_s256})"),
        }
    }
}

impl From<SecretString> for Credential {
    fn from(s: SecretString) -> Self {
        Self::Secret(s)
    }
}

impl Credential {
    /// A certificate credential from PEM text; errors name what is wrong
    /// but never include key material.
    pub fn from_pem(certificate: &str, private_key: &str) -> Result<Self, EntraError> {
        let bad = |detail: String| EntraError::Credential { detail };
        let cert =
            pem::parse(certificate).map_err(|e| bad(format!("certificate is not PEM: {e}")))?;
        if cert.tag() != "CERTIFICATE" {
            return Err(bad(format!(
                "certificate PEM holds a {:?}, not a CERTIFICATE",
                cert.tag()
            )));
        }
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(cert.contents());
        let thumbprint_s256 =
            base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, digest);
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(private_key.as_bytes())
            .map_err(|e| bad(format!("private key is not an RSA PEM key: {e}")))?;
        Ok(Self::Certificate {
            thumbprint_s256,
            key,
        })
    }
}

/// Graph client for one tenant.
pub struct EntraClient {
    http: reqwest::Client,
    cfg: EntraConfig,
    secret: Credential,
    retry: RetryPolicy,
    token: Mutex<Option<Token>>,
}

impl EntraClient {
    /// A client; no request is made until the first page is read.
    pub fn new(
        http: reqwest::Client,
        cfg: EntraConfig,
        credential: impl Into<Credential>,
        retry: RetryPolicy,
    ) -> Self {
        Self {
            http,
            cfg,
            secret: credential.into(),
            retry,
            token: Mutex::new(None),
        }
    }

    fn token_url(&self) -> String {
        format!(
            "{}/{}/oauth2/v2.0/token",
            self.cfg.authority.trim_end_matches('/'),
            self.cfg.tenant
        )
    }

    fn scope(&self) -> String {
        // The scope names the resource (Graph), not the emulator's address,
        // unless Graph itself is elsewhere (national clouds, emulators).
        format!("{}/.default", self.cfg.graph_url.trim_end_matches('/'))
    }

    /// First URL of a users round: every property rules may read, the
    /// configured extension attributes and `pack_attributes` (what the rule
    /// packs declare they read).
    pub fn users_start(&self, pack_attributes: &[String]) -> String {
        format!(
            "{}/v1.0/users/delta?$select={}",
            self.cfg.graph_url.trim_end_matches('/'),
            self.users_select(pack_attributes)
        )
    }

    /// The `$select` of [`Self::users_start`].
    pub fn users_select(&self, pack_attributes: &[String]) -> String {
        let extra: Vec<String> = self
            .cfg
            .extension_attributes
            .iter()
            .chain(pack_attributes)
            .cloned()
            .collect();
        users_select(&extra)
    }

    /// First URL of a groups round.
    pub fn groups_start(&self) -> String {
        format!(
            "{}/v1.0/groups/delta?$select=displayName,members",
            self.cfg.graph_url.trim_end_matches('/')
        )
    }

    async fn token(&self, force: bool) -> Result<SecretString, EntraError> {
        let mut guard = self.token.lock().await;
        if let Some(t) = guard.as_ref()
            && !force
            && t.refresh_at > Instant::now()
        {
            return Ok(t.value.clone());
        }
        let url = self.token_url();
        let scope = self.scope();
        let mut form: Vec<(&str, String)> = vec![
            ("grant_type", "client_credentials".into()),
            ("client_id", self.cfg.client_id.clone()),
            ("scope", scope.clone()),
        ];
        match &self.secret {
            Credential::Secret(s) => form.push(("client_secret", s.expose().to_string())),
            Credential::Certificate {
                thumbprint_s256,
                key,
            } => {
                // A fresh assertion per token request: short-lived, unique jti.
                let now = chrono::Utc::now().timestamp();
                let claims = json!({"aud": url, "iss": self.cfg.client_id, "sub": self.cfg.client_id, "jti": uuid::Uuid::new_v4().to_string(), "nbf": now, "iat": now, "exp": now + 600});
                let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
                header.typ = Some("JWT".into());
                header.x5t_s256 = Some(thumbprint_s256.clone());
                let jwt = jsonwebtoken::encode(&header, &claims, key).map_err(|e| {
                    EntraError::Credential {
                        detail: format!("cannot sign the client assertion: {e}"),
                    }
                })?;
                form.push((
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
                ));
                form.push(("client_assertion", jwt));
            }
        }
        let resp = self
            .retry
            .send(true, || self.http.post(&url).form(&form))
            .await
            .map_err(|source| EntraError::Transport {
                url: url.clone(),
                source: source.without_url(),
            })?;
        let status = resp.status();
        let body: Value = resp.json().await.map_err(|e| EntraError::Malformed {
            url: url.clone(),
            detail: format!("token response is not JSON: {e}"),
        })?;
        if !status.is_success() {
            let s = |k: &str| {
                body.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            };
            let codes = body
                .get("error_codes")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .map(|c| c.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            // The description's first line is the message; the rest are ids.
            let description = s("error_description")
                .lines()
                .next()
                .unwrap_or("")
                .to_string();
            return Err(EntraError::Auth {
                url,
                error: s("error"),
                codes,
                description,
            });
        }
        let access = body
            .get("access_token")
            .and_then(Value::as_str)
            .ok_or_else(|| EntraError::Malformed {
                url: url.clone(),
                detail: "no access_token in token response".into(),
            })?;
        let expires = body
            .get("expires_in")
            .and_then(Value::as_u64)
            .unwrap_or(3599);
        // Refresh five minutes early (or at half-life for short tokens).
        let early = Duration::from_secs(if expires > 600 {
            expires - 300
        } else {
            expires / 2
        });
        let value = SecretString::new(access);
        *guard = Some(Token {
            value: value.clone(),
            refresh_at: Instant::now() + early,
        });
        Ok(value)
    }

    /// GETs one page, refreshing the token once on 401.
    async fn get(&self, url: &str) -> Result<(String, String), EntraError> {
        let mut refreshed = false;
        loop {
            let token = self.token(refreshed).await?;
            let page_size = format!("odata.maxpagesize={}", self.cfg.page_size);
            let client_request_id = uuid::Uuid::new_v4().to_string();
            let resp = self
                .retry
                .send(true, || {
                    self.http
                        .get(url)
                        .bearer_auth(token.expose())
                        .header("Prefer", &page_size)
                        .header("client-request-id", &client_request_id)
                })
                .await
                .map_err(|source| EntraError::Transport {
                    url: url.to_string(),
                    source: source.without_url(),
                })?;
            let status = resp.status();
            let request_id = resp
                .headers()
                .get("request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            if status.as_u16() == 401 && !refreshed {
                refreshed = true;
                continue;
            }
            let location = resp
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let text = resp.text().await.map_err(|source| EntraError::Transport {
                url: url.to_string(),
                source: source.without_url(),
            })?;
            if status.is_success() {
                // Parsed later, while the next page is already on its way.
                return Ok((text, request_id));
            }
            let body: Value = match serde_json::from_str(&text) {
                Ok(b) => b,
                // An error without a JSON body (a gateway's HTML, an empty
                // 410) still has a status worth acting on.
                Err(_) if !status.is_success() => {
                    json!({"error": {"code": "", "message": text.chars().take(200).collect::<String>()}})
                }
                Err(e) => {
                    return Err(EntraError::Malformed {
                        url: url.to_string(),
                        detail: format!("HTTP {status}, body is not JSON ({e})"),
                    });
                }
            };
            if !status.is_success() {
                let err = body.get("error");
                let s = |k: &str| {
                    err.and_then(|e| e.get(k))
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string()
                };
                let rid = err
                    .and_then(|e| e.pointer("/innerError/request-id"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or(request_id);
                return Err(EntraError::Graph {
                    url: url.to_string(),
                    status: status.as_u16(),
                    code: s("code"),
                    message: s("message"),
                    request_id: rid,
                    location,
                });
            }
            return Err(EntraError::Malformed {
                url: url.to_string(),
                detail: format!("HTTP {status} with an unexpected body"),
            });
        }
    }

    /// Graph's base URL (without the version).
    pub(crate) fn graph_base(&self) -> &str {
        self.cfg.graph_url.trim_end_matches('/')
    }

    /// Sends a JSON request (subscriptions and other writes), refreshing the
    /// token once on 401; errors carry Graph's code and request-id.
    pub(crate) async fn send_json(
        &self,
        method: reqwest::Method,
        url: &str,
        body: &Value,
    ) -> Result<Value, EntraError> {
        let mut refreshed = false;
        loop {
            let token = self.token(refreshed).await?;
            let resp = self
                .retry
                .send(method != reqwest::Method::POST, || {
                    self.http
                        .request(method.clone(), url)
                        .bearer_auth(token.expose())
                        .json(body)
                })
                .await
                .map_err(|source| EntraError::Transport {
                    url: url.to_string(),
                    source: source.without_url(),
                })?;
            let status = resp.status();
            if status.as_u16() == 401 && !refreshed {
                refreshed = true;
                continue;
            }
            let request_id = resp
                .headers()
                .get("request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let text = resp.text().await.map_err(|source| EntraError::Transport {
                url: url.to_string(),
                source: source.without_url(),
            })?;
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            if status.is_success() {
                return Ok(v);
            }
            let s = |k: &str| {
                v.pointer(&format!("/error/{k}"))
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            };
            return Err(EntraError::Graph {
                url: url.to_string(),
                status: status.as_u16(),
                code: s("code"),
                message: s("message"),
                request_id,
                location: None,
            });
        }
    }

    /// Fetches one delta page and reads only its links; the items are parsed
    /// by [`RawPage::users`] or [`RawPage::groups`].
    /// Every live user's manager (`None`: no manager), from
    /// `GET /users?$select=id&$expand=manager($select=id)`: delta is known
    /// to miss manager changes, so they are re-read from time to time.
    pub async fn managers(&self) -> Result<Vec<(String, Option<String>)>, EntraError> {
        #[derive(serde::Deserialize)]
        struct Ref {
            id: String,
        }
        #[derive(serde::Deserialize)]
        struct Row {
            id: String,
            #[serde(default)]
            manager: Option<Ref>,
        }
        #[derive(serde::Deserialize)]
        struct ListPage {
            value: Vec<Row>,
            #[serde(rename = "@odata.nextLink")]
            next: Option<String>,
        }
        let mut url = format!(
            "{}/v1.0/users?$select=id&$expand=manager($select=id)&$top=999",
            self.cfg.graph_url.trim_end_matches('/')
        );
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        loop {
            let (text, _) = self.get(&url).await?;
            let page: ListPage =
                serde_json::from_str(&text).map_err(|e| EntraError::Malformed {
                    url: url.clone(),
                    detail: format!("not a users page ({e})"),
                })?;
            out.extend(
                page.value
                    .into_iter()
                    .map(|r| (r.id, r.manager.map(|m| m.id))),
            );
            match page.next {
                Some(n) if seen.insert(n.clone()) => url = n,
                Some(n) => {
                    return Err(EntraError::Stalled {
                        url: n,
                        detail: "the nextLink repeated an earlier one".into(),
                    });
                }
                None => return Ok(out),
            }
        }
    }

    pub async fn page(&self, url: &str) -> Result<RawPage, EntraError> {
        let (text, request_id) = self.get(url).await?;
        #[derive(serde::Deserialize)]
        struct Links {
            #[serde(rename = "@odata.nextLink")]
            next: Option<String>,
            #[serde(rename = "@odata.deltaLink")]
            delta: Option<String>,
            value: Option<serde::de::IgnoredAny>,
        }
        let links: Links = serde_json::from_str(&text).map_err(|e| EntraError::Malformed {
            url: url.to_string(),
            detail: format!("not a delta page ({e})"),
        })?;
        if links.value.is_none() {
            return Err(EntraError::Malformed {
                url: url.to_string(),
                detail: "no `value` array".into(),
            });
        }
        if links.next.is_none() == links.delta.is_none() {
            return Err(EntraError::Malformed {
                url: url.to_string(),
                detail:
                    "a delta page must carry exactly one of @odata.nextLink and @odata.deltaLink"
                        .into(),
            });
        }
        Ok(RawPage {
            url: url.to_string(),
            text,
            next_link: links.next,
            delta_link: links.delta,
            request_id,
        })
    }

    /// Reads and parses one `users/delta` page.
    pub async fn users_page(&self, url: &str) -> Result<Page<UserChange>, EntraError> {
        let raw = self.page(url).await?;
        let changes = raw.users()?;
        Ok(Page {
            changes,
            next_link: raw.next_link,
            delta_link: raw.delta_link,
            request_id: raw.request_id,
        })
    }

    /// Reads and parses one `groups/delta` page.
    pub async fn groups_page(&self, url: &str) -> Result<Page<GroupChange>, EntraError> {
        let raw = self.page(url).await?;
        let changes = raw.groups()?;
        Ok(Page {
            changes,
            next_link: raw.next_link,
            delta_link: raw.delta_link,
            request_id: raw.request_id,
        })
    }
}

/// A delta page whose links are known and whose items are not parsed yet.
#[derive(Debug, Clone)]
pub struct RawPage {
    pub url: String,
    text: String,
    pub next_link: Option<String>,
    pub delta_link: Option<String>,
    pub request_id: String,
}

impl RawPage {
    fn items(&self) -> Result<Vec<Value>, EntraError> {
        #[derive(serde::Deserialize)]
        struct Items {
            value: Vec<Value>,
        }
        serde_json::from_str::<Items>(&self.text)
            .map(|i| i.value)
            .map_err(|e| EntraError::Malformed {
                url: self.url.clone(),
                detail: format!("`value` is not an array of objects ({e})"),
            })
    }

    /// The page's items as user changes; a bad item is named by index.
    pub fn users(&self) -> Result<Vec<UserChange>, EntraError> {
        self.items()?
            .iter()
            .enumerate()
            .map(|(i, item)| {
                parse_user(item).map_err(|detail| EntraError::Malformed {
                    url: self.url.clone(),
                    detail: format!("value[{i}]: {detail}"),
                })
            })
            .collect()
    }

    /// The page's items as group changes; a bad item is named by index.
    pub fn groups(&self) -> Result<Vec<GroupChange>, EntraError> {
        self.items()?
            .iter()
            .enumerate()
            .map(|(i, item)| {
                parse_group(item).map_err(|detail| EntraError::Malformed {
                    url: self.url.clone(),
                    detail: format!("value[{i}]: {detail}"),
                })
            })
            .collect()
    }
}

fn removal(v: &Value) -> Option<Removal> {
    let reason = v.get("@removed")?.get("reason").and_then(Value::as_str);
    Some(if reason == Some("deleted") {
        Removal::HardDeleted
    } else {
        Removal::SoftDeleted
    })
}

/// Parses one `users/delta` item.
pub fn parse_user(item: &Value) -> Result<UserChange, String> {
    let id = item
        .get("id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or("item has no id")?
        .to_string();
    if let Some(removal) = removal(item) {
        return Ok(UserChange::Removed { id, removal });
    }
    // Deserialize from the borrowed tree: no copy of the item.
    let mut user = EntraUser::deserialize(item).map_err(|e| format!("user {id}: {e}"))?;
    user.manager_id = item
        .get("manager@delta")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().rev().find(|m| m.get("@removed").is_none()))
        .and_then(|m| m.get("id"))
        .and_then(Value::as_str)
        .map(str::to_string);
    user.removed = None;
    // Properties beyond the typed ones (extension attributes, what packs
    // declared in `[source]`) travel to the rules in `extensions`.
    if let Some(obj) = item.as_object() {
        for (k, v) in obj {
            if !k.contains('@') && !USER_SELECT.split(',').any(|p| p == k) {
                user.extensions.insert(k.clone(), v.clone());
            }
        }
    }
    Ok(UserChange::Upsert(user))
}

/// Parses one `groups/delta` item.
pub fn parse_group(item: &Value) -> Result<GroupChange, String> {
    let id = item
        .get("id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or("item has no id")?
        .to_string();
    let mut g = GroupChange {
        id,
        display_name: item
            .get("displayName")
            .and_then(Value::as_str)
            .map(str::to_string),
        removed: removal(item).is_some(),
        ..Default::default()
    };
    if let Some(members) = item.get("members@delta").and_then(Value::as_array) {
        for m in members {
            let Some(mid) = m.get("id").and_then(Value::as_str) else {
                continue;
            };
            let removed = m.get("@removed").is_some();
            // Users and nested groups matter; devices, contacts and service
            // principals are ignored (never an error: they are normal).
            match m.get("@odata.type").and_then(Value::as_str) {
                None | Some("#microsoft.graph.user") if removed => {
                    g.members_removed.push(mid.to_string())
                }
                None | Some("#microsoft.graph.user") => g.members_added.push(mid.to_string()),
                Some("#microsoft.graph.group") if removed => g.groups_removed.push(mid.to_string()),
                Some("#microsoft.graph.group") => g.groups_added.push(mid.to_string()),
                Some(_) => {}
            }
        }
    }
    Ok(g)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_users_removed_and_manager() {
        let u = parse_user(&json!({"id": "a", "userPrincipalName": "a@x", "accountEnabled": false, "businessPhones": [], "manager@delta": [{"@odata.type": "#microsoft.graph.user", "id": "m"}]})).expect("parses");
        let UserChange::Upsert(u) = u else {
            panic!("expected upsert")
        };
        assert_eq!(u.manager_id.as_deref(), Some("m"));
        assert_eq!(u.account_enabled, Some(false));
        assert_eq!(
            parse_user(&json!({"id": "b", "@removed": {"reason": "deleted"}})).expect("parses"),
            UserChange::Removed {
                id: "b".into(),
                removal: Removal::HardDeleted
            }
        );
        assert!(parse_user(&json!({"userPrincipalName": "x"})).is_err());
        assert!(parse_user(&json!({"id": "c", "accountEnabled": "yes"})).is_err());
    }

    #[test]
    fn parses_group_member_changes() {
        let g = parse_group(&json!({"id": "g", "displayName": "G", "members@delta": [
            {"@odata.type": "#microsoft.graph.user", "id": "u1"},
            {"@odata.type": "#microsoft.graph.user", "id": "u2", "@removed": {"reason": "deleted"}},
            {"@odata.type": "#microsoft.graph.device", "id": "d1"}]}))
        .expect("parses");
        assert_eq!(g.members_added, vec!["u1"]);
        assert_eq!(g.members_removed, vec!["u2"]);
    }
}
