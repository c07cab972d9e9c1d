//! Bulk API 2.0 ingest (salesforce.md §8) at `/services/data/vXX.X/jobs/ingest`:
//! create a job, upload its CSV once, close or abort it, poll its state and
//! counters, read the successful, failed and unprocessed rows as CSV, list
//! and delete jobs.
//!
//! A closed job moves UploadComplete → InProgress → JobComplete | Failed
//! as it is polled ([`BulkSettings`] sets how many polls and how much time
//! that takes), so tests see every state deterministically. Each row goes
//! through the same `create`/`update`/`delete` as the REST API, so a
//! converted lead or an inactive owner fails that row only.
//!
//! Problems with the data itself (an unknown column, unparsable CSV, the
//! wrong line ending, no data at all) fail the *job* with an `errorMessage`
//! when it is processed, as Salesforce reports them; the upload is refused
//! (400) only for a second upload, a job that is not Open or a wrong
//! content type. Error codes of the job endpoints are partly unverified
//! (noted where chosen).

use std::collections::BTreeMap;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::super::Sim;
use super::{
    Kind, SfErr, SfOrg, count_write, err, error_response, gate, make_id, now_iso, parse_body,
    schema, with_limits, write_fault,
};

/// Upload limit per job (150 MB).
const UPLOAD_LIMIT: usize = 150 * 1024 * 1024;
/// Records per internal batch; each counts against the daily batch limit.
const INTERNAL_BATCH: usize = 10_000;
/// Daily Bulk API batch allocation (shared with Bulk API 1.0).
pub(super) const DAILY_BATCHES: u64 = 15_000;

/// How fast closed jobs progress (`PUT /_sim/salesforce/bulk`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BulkSettings {
    /// Polls of a closed job that still show `UploadComplete`.
    pub polls_before_in_progress: u32,
    /// Polls that show `InProgress` before the job is processed.
    pub polls_in_progress: u32,
    /// Least time between closing a job and its completion.
    pub min_processing_ms: u64,
    /// The next job to be processed fails with this `errorMessage`
    /// (all its rows unprocessed), as after an internal failure.
    pub fail_next_job: Option<String>,
}

impl Default for BulkSettings {
    fn default() -> Self {
        Self {
            polls_before_in_progress: 0,
            polls_in_progress: 1,
            min_processing_ms: 0,
            fail_next_job: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JobState {
    Open,
    UploadComplete,
    InProgress,
    JobComplete,
    Failed,
    Aborted,
}

impl JobState {
    fn name(self) -> &'static str {
        match self {
            Self::Open => "Open",
            Self::UploadComplete => "UploadComplete",
            Self::InProgress => "InProgress",
            Self::JobComplete => "JobComplete",
            Self::Failed => "Failed",
            Self::Aborted => "Aborted",
        }
    }

    fn terminal(self) -> bool {
        matches!(self, Self::JobComplete | Self::Failed | Self::Aborted)
    }
}

/// One ingest job.
#[derive(Debug, Clone)]
struct Job {
    id: String,
    object: &'static str,
    operation: String,
    external_id: Option<String>,
    state: JobState,
    created_by: String,
    created: String,
    modstamp: String,
    api_version: String,
    line_ending: String,
    delimiter: String,
    data: Option<String>,
    header: Vec<String>,
    /// `(sf__Id, sf__Created, input values)`.
    succeeded: Vec<(String, bool, Vec<String>)>,
    /// `(sf__Id, sf__Error, input values)`.
    failed: Vec<(String, String, Vec<String>)>,
    unprocessed: Vec<Vec<String>>,
    polls: u32,
    closed_at: Option<Instant>,
    error_message: Option<String>,
    processing_ms: u64,
}

/// The org's ingest jobs.
#[derive(Debug, Default)]
pub(super) struct BulkState {
    jobs: BTreeMap<String, Job>,
    pub(super) settings: BulkSettings,
    /// Internal batches used (for `/limits` `DailyBulkApiBatches`).
    pub(super) batches_used: u64,
}

impl Job {
    fn info(&self) -> Value {
        let mut v = json!({
            "id": self.id,
            "operation": self.operation,
            "object": self.object,
            "createdById": self.created_by,
            "createdDate": self.created,
            "systemModstamp": self.modstamp,
            "state": self.state.name(),
            "concurrencyMode": "Parallel",
            "contentType": "CSV",
            "apiVersion": self.api_version.parse::<f64>().unwrap_or(62.0),
            "jobType": "V2Ingest",
            "contentUrl": format!("services/data/v{}/jobs/ingest/{}/batches", self.api_version, self.id),
            "lineEnding": self.line_ending,
            "columnDelimiter": self.delimiter,
        });
        if let Some(e) = &self.external_id {
            v["externalIdFieldName"] = json!(e);
        }
        v
    }

    fn full_info(&self) -> Value {
        let mut v = self.info();
        v["numberRecordsProcessed"] = json!(self.succeeded.len() + self.failed.len());
        v["numberRecordsFailed"] = json!(self.failed.len());
        v["retries"] = json!(0);
        v["totalProcessingTime"] = json!(self.processing_ms);
        v["apiActiveProcessingTime"] = json!(self.processing_ms);
        v["apexProcessingTime"] = json!(0);
        if let Some(m) = &self.error_message {
            v["errorMessage"] = json!(m);
        }
        v
    }

    fn fail(&mut self, message: String) {
        self.state = JobState::Failed;
        self.error_message = Some(message);
        self.modstamp = now_iso();
    }
}

fn delimiter_byte(name: &str) -> Option<u8> {
    Some(match name {
        "COMMA" => b',',
        "TAB" => b'\t',
        "SEMICOLON" => b';',
        "PIPE" => b'|',
        "BACKQUOTE" => b'`',
        "CARET" => b'^',
        _ => return None,
    })
}

/// `STATUS_CODE:message:fields --`, as in `sf__Error` (the exact format
/// is unverified; the trailing ` --` is as remembered from real results).
fn error_cell(e: &SfErr) -> String {
    format!("{}:{}:{} --", e.code, e.message, e.fields.join(","))
}

impl SfOrg {
    /// Creates an ingest job from its JSON definition.
    fn create_job(&mut self, body: &Value, version: &str) -> Result<Value, SfErr> {
        let s = |k: &str| body.get(k).and_then(Value::as_str);
        // Codes of invalid job definitions are unverified: INVALIDJOB for
        // the definition, INVALIDENTITY for the object.
        let object =
            s("object").ok_or_else(|| err("INVALIDJOB", "The object field is required", &[]))?;
        let (object, _) = schema(object).ok_or_else(|| {
            err(
                "INVALIDENTITY",
                format!("Entity '{object}' is not supported by the Bulk API."),
                &[],
            )
        })?;
        let operation = s("operation").unwrap_or_default();
        if !matches!(
            operation,
            "insert" | "update" | "upsert" | "delete" | "hardDelete"
        ) {
            return Err(err(
                "INVALIDJOB",
                format!("Invalid operation: '{operation}'"),
                &[],
            ));
        }
        let external_id = s("externalIdFieldName").map(str::to_string);
        if operation == "upsert" {
            match external_id.as_deref() {
                None => {
                    return Err(err(
                        "INVALIDJOB",
                        "externalIdFieldName is required for upsert",
                        &[],
                    ));
                }
                // No object of the emulator has an External ID field.
                Some(f) if !f.eq_ignore_ascii_case("Id") => {
                    return Err(err(
                        "INVALIDJOB",
                        format!(
                            "Field name provided, {f} is not an External ID or indexed field for {object}"
                        ),
                        &[],
                    ));
                }
                Some(_) => {}
            }
        }
        if s("contentType").is_some_and(|c| c != "CSV") {
            return Err(err("INVALIDJOB", "contentType must be CSV", &[]));
        }
        let line_ending = s("lineEnding").unwrap_or("LF").to_string();
        if !matches!(line_ending.as_str(), "LF" | "CRLF") {
            return Err(err("INVALIDJOB", "lineEnding must be LF or CRLF", &[]));
        }
        let delimiter = s("columnDelimiter").unwrap_or("COMMA").to_string();
        if delimiter_byte(&delimiter).is_none() {
            return Err(err(
                "INVALIDJOB",
                format!("Invalid columnDelimiter: {delimiter}"),
                &[],
            ));
        }
        let id = make_id("750", self.next_id);
        self.next_id += 1;
        let now = now_iso();
        let job = Job {
            id: id.clone(),
            object,
            operation: operation.to_string(),
            external_id: (operation == "upsert").then_some(external_id).flatten(),
            state: JobState::Open,
            created_by: self.integration_user_id.clone(),
            created: now.clone(),
            modstamp: now,
            api_version: version.to_string(),
            line_ending,
            delimiter,
            data: None,
            header: Vec::new(),
            succeeded: Vec::new(),
            failed: Vec::new(),
            unprocessed: Vec::new(),
            polls: 0,
            closed_at: None,
            error_message: None,
            processing_ms: 0,
        };
        let info = job.info();
        self.bulk.jobs.insert(id, job);
        Ok(info)
    }

    /// One poll of a job: closed jobs move on, and are processed once
    /// they have been polled and waited for long enough.
    fn poll_job(&mut self, id: &str) -> Option<Value> {
        let settings = self.bulk.settings.clone();
        let job = self.bulk.jobs.get_mut(id)?;
        if matches!(job.state, JobState::UploadComplete | JobState::InProgress) {
            job.polls += 1;
            if job.state == JobState::UploadComplete
                && job.polls > settings.polls_before_in_progress
            {
                job.state = JobState::InProgress;
            }
            let waited = job
                .closed_at
                .is_some_and(|t| t.elapsed().as_millis() >= u128::from(settings.min_processing_ms));
            if job.state == JobState::InProgress
                && job.polls > settings.polls_before_in_progress + settings.polls_in_progress
                && waited
            {
                self.process_job(id);
            }
        }
        Some(self.bulk.jobs.get(id)?.full_info())
    }

    /// Runs every row of a job through the API's write rules.
    fn process_job(&mut self, id: &str) {
        let Some(mut job) = self.bulk.jobs.remove(id) else {
            return;
        };
        let started = Instant::now();
        let rows = self.run_rows(&mut job);
        if let Some(rows) = rows {
            self.bulk.batches_used += rows.div_ceil(INTERNAL_BATCH).max(1) as u64;
        }
        job.processing_ms = started.elapsed().as_millis() as u64;
        job.modstamp = now_iso();
        if job.state == JobState::InProgress {
            job.state = JobState::JobComplete;
        }
        self.bulk.jobs.insert(id.to_string(), job);
    }

    /// Parses and applies a job's CSV; fails the job on data problems.
    /// Returns the number of rows when the job was processed.
    fn run_rows(&mut self, job: &mut Job) -> Option<usize> {
        let data = job.data.clone().unwrap_or_default();
        let parsed = parse_csv(job, &data);
        if let Some(message) = self.bulk.settings.fail_next_job.take() {
            if let Ok((header, rows)) = parsed {
                job.header = header;
                job.unprocessed = rows;
            }
            job.fail(message);
            return None;
        }
        let (header, rows) = match parsed {
            Ok(p) => p,
            Err(message) => {
                job.fail(message);
                return None;
            }
        };
        let Some((_, defs)) = schema(job.object) else {
            job.fail(format!(
                "InvalidBatch : Entity '{}' is not supported",
                job.object
            ));
            return None;
        };
        // Columns are field API names (case-insensitive); relationship
        // columns (Owner.Username) are not supported by the emulator.
        let mut columns: Vec<&'static str> = Vec::new();
        for h in &header {
            match defs.iter().find(|d| d.name.eq_ignore_ascii_case(h.trim())) {
                Some(d) if columns.contains(&d.name) => {
                    job.fail(format!("InvalidBatch : Duplicate field name: {h}"));
                    return None;
                }
                Some(d) => columns.push(d.name),
                None => {
                    job.fail(format!("InvalidBatch : Field name not found : {h}"));
                    return None;
                }
            }
        }
        job.header = header;
        let count = rows.len();
        for values in rows {
            let result = self.apply_row(job, defs, &columns, &values);
            match result {
                Ok((id, created)) => job.succeeded.push((id, created, values)),
                Err((id, e)) => job.failed.push((id, error_cell(&e), values)),
            }
        }
        Some(count)
    }

    /// One row: empty cells leave a field alone, `#N/A` clears it.
    fn apply_row(
        &mut self,
        job: &Job,
        defs: &[super::FieldDef],
        columns: &[&'static str],
        values: &[String],
    ) -> Result<(String, bool), (String, SfErr)> {
        let mut fields = Map::new();
        let mut id: Option<String> = None;
        for (col, val) in columns.iter().zip(values) {
            if *col == "Id" {
                id = Some(val.clone()).filter(|v| !v.is_empty());
                continue;
            }
            if val.is_empty() {
                continue;
            }
            let kind = defs.iter().find(|d| d.name == *col).map(|d| d.kind);
            let v = if val == "#N/A" {
                Value::Null
            } else {
                match kind {
                    Some(Kind::Bool) if val.eq_ignore_ascii_case("true") => json!(true),
                    Some(Kind::Bool) if val.eq_ignore_ascii_case("false") => json!(false),
                    Some(Kind::Number) => val
                        .parse::<f64>()
                        .ok()
                        .and_then(serde_json::Number::from_f64)
                        .map_or_else(|| json!(val), Value::Number),
                    _ => json!(val),
                }
            };
            fields.insert(col.to_string(), v);
        }
        let first = |e: Vec<SfErr>| {
            e.into_iter()
                .next()
                .unwrap_or_else(|| err("UNKNOWN_EXCEPTION", "unknown error", &[]))
        };
        let row_id = id.clone().unwrap_or_default();
        let missing_id = || {
            (
                String::new(),
                err(
                    "MISSING_ARGUMENT",
                    "Id not specified in an update call",
                    &[],
                ),
            )
        };
        match job.operation.as_str() {
            "insert" => {
                if id.is_some() {
                    return Err((
                        row_id,
                        err(
                            "INVALID_FIELD_FOR_INSERT_UPDATE",
                            "cannot specify Id in an insert call",
                            &["Id"],
                        ),
                    ));
                }
                self.create(job.object, fields)
                    .map(|id| (id, true))
                    .map_err(|e| (String::new(), first(e)))
            }
            "update" => {
                let id = id.ok_or_else(missing_id)?;
                self.update(job.object, &id, fields)
                    .map(|()| (id.clone(), false))
                    .map_err(|e| (id, first(e)))
            }
            "upsert" => match id {
                Some(id) => self
                    .update(job.object, &id, fields)
                    .map(|()| (id.clone(), false))
                    .map_err(|e| (id, first(e))),
                None => self
                    .create(job.object, fields)
                    .map(|id| (id, true))
                    .map_err(|e| (String::new(), first(e))),
            },
            _ => {
                let id = id.ok_or_else(missing_id)?;
                if self.get(job.object, &id).is_none() {
                    return Err((id, err("ENTITY_IS_DELETED", "entity is deleted", &[])));
                }
                self.delete(&id)
                    .map(|()| (id.clone(), false))
                    .map_err(|e| (id, e))
            }
        }
    }

    /// Jobs for inspection (`GET /_sim/salesforce/bulk/jobs`).
    pub fn bulk_jobs(&self) -> Vec<Value> {
        self.bulk.jobs.values().map(Job::full_info).collect()
    }

    /// Sets how closed jobs progress.
    pub fn set_bulk_settings(&mut self, settings: BulkSettings) {
        self.bulk.settings = settings;
    }
}

/// Splits a job's data into header and rows with its delimiter and line
/// ending; the error is the job's `errorMessage`.
fn parse_csv(job: &Job, data: &str) -> Result<(Vec<String>, Vec<Vec<String>>), String> {
    if data.trim().is_empty() {
        // Closing a job without data: the exact message is unverified.
        return Err("InvalidBatch : No data uploaded for the job".into());
    }
    let crlf = data.contains("\r\n");
    if job.line_ending == "LF" && crlf {
        return Err(
            "ClientInputError : LineEnding is invalid on user data. Current LineEnding setting is LF"
                .into(),
        );
    }
    if job.line_ending == "CRLF" && !crlf && data.trim_end().contains('\n') {
        return Err(
            "ClientInputError : LineEnding is invalid on user data. Current LineEnding setting is CRLF"
                .into(),
        );
    }
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter_byte(&job.delimiter).unwrap_or(b','))
        .has_headers(true)
        .from_reader(data.as_bytes());
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| format!("InvalidBatch : Failed to parse CSV header: {e}"))?
        .iter()
        .map(str::to_string)
        .collect();
    let mut rows = Vec::new();
    for (n, rec) in reader.records().enumerate() {
        let rec =
            rec.map_err(|e| format!("InvalidBatch : Failed to parse CSV row {}: {e}", n + 1))?;
        rows.push(rec.iter().map(str::to_string).collect());
    }
    Ok((header, rows))
}

/// Results as Salesforce writes them: every value quoted, LF line ends.
fn results_csv(prefix: &[&str], header: &[String], rows: Vec<Vec<String>>) -> String {
    let mut w = csv::WriterBuilder::new()
        .quote_style(csv::QuoteStyle::Always)
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::new());
    let head: Vec<&str> = prefix
        .iter()
        .copied()
        .chain(header.iter().map(String::as_str))
        .collect();
    // Writing to a Vec cannot fail.
    let _ = w.write_record(&head);
    for r in rows {
        let _ = w.write_record(&r);
    }
    String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
}

pub(super) fn routes() -> Router<Sim> {
    Router::new()
        .route(
            "/services/data/{v}/jobs/ingest",
            post(create_job).get(list_jobs),
        )
        .route(
            "/services/data/{v}/jobs/ingest/{id}",
            get(job_info).patch(set_state).delete(delete_job),
        )
        .route(
            "/services/data/{v}/jobs/ingest/{id}/batches",
            put(upload).layer(DefaultBodyLimit::max(UPLOAD_LIMIT)),
        )
        .route("/services/data/{v}/jobs/ingest/{id}/{result}", get(results))
        .route(
            "/services/data/{v}/jobs/ingest/{id}/{result}/",
            get(results),
        )
}

fn not_found() -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        "The requested resource does not exist",
        &[],
    )
}

fn bad(e: &SfErr) -> Response {
    error_response(StatusCode::BAD_REQUEST, e.code, &e.message, &[])
}

async fn create_job(
    State(sim): State<Sim>,
    Path(v): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let version = match gate(&sim, &v, &headers) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let body = match parse_body(&body) {
        Ok(b) => b,
        Err(r) => return with_limits(&sim, r),
    };
    let resp = match sim.salesforce().create_job(&body, &version) {
        Ok(info) => super::super::json(StatusCode::OK, info),
        Err(e) => bad(&e),
    };
    with_limits(&sim, resp)
}

async fn list_jobs(State(sim): State<Sim>, Path(v): Path<String>, headers: HeaderMap) -> Response {
    if let Err(r) = gate(&sim, &v, &headers) {
        return r;
    }
    let records: Vec<Value> = sim.salesforce().bulk.jobs.values().map(Job::info).collect();
    let body = json!({"done": true, "records": records, "nextRecordsUrl": null});
    with_limits(&sim, super::super::json(StatusCode::OK, body))
}

async fn job_info(
    State(sim): State<Sim>,
    Path((v, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = gate(&sim, &v, &headers) {
        return r;
    }
    let info = sim.salesforce().poll_job(&id);
    let resp = match info {
        Some(info) => super::super::json(StatusCode::OK, info),
        None => not_found(),
    };
    with_limits(&sim, resp)
}

/// `PATCH {"state": "UploadComplete" | "Aborted"}`. Codes for refused
/// transitions (INVALIDJOBSTATE) are unverified.
async fn set_state(
    State(sim): State<Sim>,
    Path((v, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = gate(&sim, &v, &headers) {
        return r;
    }
    let body = match parse_body(&body) {
        Ok(b) => b,
        Err(r) => return with_limits(&sim, r),
    };
    let wanted = body.get("state").and_then(Value::as_str).unwrap_or("");
    let mut org = sim.salesforce();
    let Some(job) = org.bulk.jobs.get_mut(&id) else {
        drop(org);
        return with_limits(&sim, not_found());
    };
    let refused = |m: String| err("INVALIDJOBSTATE", m, &[]);
    let result = match (wanted, job.state) {
        ("UploadComplete", JobState::Open) => {
            job.state = JobState::UploadComplete;
            job.closed_at = Some(Instant::now());
            Ok(())
        }
        ("UploadComplete", s) => Err(refused(format!(
            "Closing a job in state {} is not allowed",
            s.name()
        ))),
        ("Aborted", s) if !s.terminal() => {
            job.state = JobState::Aborted;
            if let Some(data) = job.data.clone()
                && let Ok((header, rows)) = parse_csv(job, &data)
            {
                job.header = header;
                job.unprocessed = rows;
            }
            Ok(())
        }
        ("Aborted", JobState::JobComplete) => {
            Err(refused("Aborting already Completed Job not allowed".into()))
        }
        ("Aborted", s) => Err(refused(format!(
            "Aborting a job in state {} is not allowed",
            s.name()
        ))),
        (other, _) => Err(refused(format!("Invalid state: '{other}'"))),
    };
    let resp = match result {
        Ok(()) => {
            job.modstamp = now_iso();
            super::super::json(StatusCode::OK, job.info())
        }
        Err(e) => bad(&e),
    };
    drop(org);
    with_limits(&sim, resp)
}

/// `PUT .../batches` with `Content-Type: text/csv`, once, while Open.
async fn upload(
    State(sim): State<Sim>,
    Path((v, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = gate(&sim, &v, &headers) {
        return r;
    }
    let csv_type = headers
        .get("content-type")
        .and_then(|h| h.to_str().ok())
        .is_some_and(|c| c.trim().to_ascii_lowercase().starts_with("text/csv"));
    if !csv_type {
        // Status and code for a wrong content type are unverified.
        return with_limits(
            &sim,
            error_response(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "INVALIDCONTENTTYPE",
                "Content-Type must be text/csv",
                &[],
            ),
        );
    }
    let text = String::from_utf8_lossy(&body).into_owned();
    {
        let org = sim.salesforce();
        let Some(job) = org.bulk.jobs.get(&id) else {
            drop(org);
            return with_limits(&sim, not_found());
        };
        let refusal = if job.data.is_some() {
            Some(err(
                "BULK_API_ERROR",
                format!(
                    "Found multiple contents for job: <{id}>, please 'Close' / 'Abort' / 'Delete' the current Job then create a new Job and make sure you only do 'PUT' once on a given Job."
                ),
                &[],
            ))
        } else if job.state != JobState::Open {
            Some(err(
                "INVALIDJOBSTATE",
                format!(
                    "Uploading data to a job in state {} is not allowed",
                    job.state.name()
                ),
                &[],
            ))
        } else {
            None
        };
        if let Some(e) = refusal {
            drop(org);
            return with_limits(&sim, bad(&e));
        }
    }
    let lose = match write_fault(&sim) {
        Ok(l) => l,
        Err(r) => return with_limits(&sim, r),
    };
    let rows = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
        .saturating_sub(1);
    count_write(&sim, "PUT jobs/ingest/{id}/batches".into(), rows as u64);
    if let Some(job) = sim.salesforce().bulk.jobs.get_mut(&id) {
        job.data = Some(text);
    }
    let resp = if lose {
        super::lost_response()
    } else {
        StatusCode::CREATED.into_response()
    };
    with_limits(&sim, resp)
}

async fn delete_job(
    State(sim): State<Sim>,
    Path((v, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = gate(&sim, &v, &headers) {
        return r;
    }
    let mut org = sim.salesforce();
    let resp = match org.bulk.jobs.get(&id).map(|j| j.state) {
        None => not_found(),
        // A job can be deleted once closed (UploadComplete) or finished.
        Some(JobState::Open | JobState::InProgress) => bad(&err(
            "INVALIDJOBSTATE",
            "Only jobs in state UploadComplete, JobComplete, Aborted or Failed can be deleted",
            &[],
        )),
        Some(_) => {
            org.bulk.jobs.remove(&id);
            StatusCode::NO_CONTENT.into_response()
        }
    };
    drop(org);
    with_limits(&sim, resp)
}

async fn results(
    State(sim): State<Sim>,
    Path((v, id, kind)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = gate(&sim, &v, &headers) {
        return r;
    }
    let org = sim.salesforce();
    let Some(job) = org.bulk.jobs.get(&id) else {
        drop(org);
        return with_limits(&sim, not_found());
    };
    let body = match kind.as_str() {
        "successfulResults" => results_csv(
            &["sf__Id", "sf__Created"],
            &job.header,
            job.succeeded
                .iter()
                .map(|(id, created, vals)| {
                    [id.clone(), created.to_string()]
                        .into_iter()
                        .chain(vals.iter().cloned())
                        .collect()
                })
                .collect(),
        ),
        "failedResults" => results_csv(
            &["sf__Id", "sf__Error"],
            &job.header,
            job.failed
                .iter()
                .map(|(id, e, vals)| {
                    [id.clone(), e.clone()]
                        .into_iter()
                        .chain(vals.iter().cloned())
                        .collect()
                })
                .collect(),
        ),
        "unprocessedrecords" => results_csv(&[], &job.header, job.unprocessed.clone()),
        _ => {
            drop(org);
            return with_limits(&sim, not_found());
        }
    };
    drop(org);
    with_limits(
        &sim,
        (StatusCode::OK, [("content-type", "text/csv")], body).into_response(),
    )
}

#[cfg(test)]
mod tests {
    use super::super::json_map;
    use super::*;

    /// An org with an active and an inactive user and two leads, one converted.
    fn org() -> (SfOrg, [String; 4]) {
        let mut org = SfOrg::new();
        let active = org.insert_raw(
            "User",
            json_map(json!({"Username": "a@x.com", "LastName": "A", "IsActive": true})),
        );
        let inactive = org.insert_raw(
            "User",
            json_map(json!({"Username": "b@x.com", "LastName": "B", "IsActive": false})),
        );
        org.integration_user_id = active.clone();
        let open = org
            .seed_record("Lead", json_map(json!({"LastName": "O", "Company": "C"})))
            .expect("lead");
        let converted = org
            .seed_record(
                "Lead",
                json_map(json!({"LastName": "V", "Company": "C", "IsConverted": true})),
            )
            .expect("lead");
        (org, [active, inactive, open, converted])
    }

    fn job(org: &mut SfOrg, object: &str, operation: &str, data: &str) -> String {
        let info = org
            .create_job(&json!({"object": object, "operation": operation}), "62.0")
            .expect("job");
        assert_eq!(info["state"], "Open");
        let id = info["id"].as_str().expect("id").to_string();
        assert!(id.starts_with("750"));
        let j = org.bulk.jobs.get_mut(&id).expect("stored");
        j.data = Some(data.to_string());
        j.state = JobState::UploadComplete;
        j.closed_at = Some(Instant::now());
        id
    }

    #[test]
    fn a_closed_job_progresses_as_it_is_polled_and_fails_rows_not_the_job() {
        let (mut org, [active, inactive, open, converted]) = org();
        let data =
            format!("Id,OwnerId\n{open},{active}\n{converted},{active}\n{open},{inactive}\n");
        let id = job(&mut org, "Lead", "update", &data);
        assert_eq!(org.poll_job(&id).expect("job")["state"], "InProgress");
        let info = org.poll_job(&id).expect("job");
        assert_eq!(info["state"], "JobComplete");
        assert_eq!(info["numberRecordsProcessed"], 3);
        assert_eq!(info["numberRecordsFailed"], 2);
        assert_eq!(info["retries"], 0);
        let j = &org.bulk.jobs[&id];
        let ok = results_csv(
            &["sf__Id", "sf__Created"],
            &j.header,
            j.succeeded
                .iter()
                .map(|(i, c, v)| {
                    [i.clone(), c.to_string()]
                        .into_iter()
                        .chain(v.clone())
                        .collect()
                })
                .collect(),
        );
        assert_eq!(
            ok,
            format!(
                "\"sf__Id\",\"sf__Created\",\"Id\",\"OwnerId\"\n\"{open}\",\"false\",\"{open}\",\"{active}\"\n"
            )
        );
        let failed: Vec<&String> = j.failed.iter().map(|(_, e, _)| e).collect();
        assert_eq!(
            failed[0],
            "CANNOT_UPDATE_CONVERTED_LEAD:cannot reference converted lead: --"
        );
        assert_eq!(
            failed[1],
            &format!(
                "INACTIVE_OWNER_OR_USER:operation performed with inactive user [{inactive}] as owner of lead: --"
            )
        );
        assert_eq!(j.failed[0].0, converted);
        assert_eq!(org.bulk.batches_used, 1);
    }

    #[test]
    fn data_problems_fail_the_job_with_a_message() {
        let (mut org, [active, _, open, _]) = org();
        let id = job(&mut org, "Lead", "update", &format!("Id,Bogus\n{open},x\n"));
        org.poll_job(&id);
        let info = org.poll_job(&id).expect("job");
        assert_eq!(info["state"], "Failed");
        assert_eq!(
            info["errorMessage"],
            "InvalidBatch : Field name not found : Bogus"
        );
        let id = job(
            &mut org,
            "Lead",
            "update",
            &format!("Id,OwnerId\r\n{open},{active}\r\n"),
        );
        org.poll_job(&id);
        let info = org.poll_job(&id).expect("job");
        assert_eq!(info["state"], "Failed");
        assert!(
            info["errorMessage"]
                .as_str()
                .expect("msg")
                .contains("LineEnding")
        );
        // A row with fewer cells than the header.
        let id = job(&mut org, "Lead", "update", &format!("Id,OwnerId\n{open}\n"));
        org.poll_job(&id);
        let info = org.poll_job(&id).expect("job");
        assert_eq!(info["state"], "Failed");
        assert!(
            info["errorMessage"]
                .as_str()
                .expect("msg")
                .starts_with("InvalidBatch : Failed to parse CSV row 1"),
            "{info}"
        );
    }

    #[test]
    fn job_definitions_are_validated() {
        let (mut org, _) = org();
        let e = org
            .create_job(&json!({"object": "Nope", "operation": "insert"}), "62.0")
            .expect_err("object");
        assert_eq!(e.code, "INVALIDENTITY");
        let e = org
            .create_job(&json!({"object": "Lead", "operation": "merge"}), "62.0")
            .expect_err("operation");
        assert_eq!(e.code, "INVALIDJOB");
        let e = org
            .create_job(&json!({"object": "Lead", "operation": "upsert"}), "62.0")
            .expect_err("no key");
        assert_eq!(e.code, "INVALIDJOB");
    }

    #[test]
    fn inserts_report_created_and_settings_slow_progress() {
        let (mut org, _) = org();
        org.set_bulk_settings(BulkSettings {
            polls_before_in_progress: 1,
            polls_in_progress: 2,
            ..BulkSettings::default()
        });
        let id = job(
            &mut org,
            "Case",
            "insert",
            "Subject,Status\nA,New\n\"B, c\",Closed\n",
        );
        let states: Vec<String> = (0..4)
            .map(|_| {
                org.poll_job(&id).expect("job")["state"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            })
            .collect();
        assert_eq!(
            states,
            ["UploadComplete", "InProgress", "InProgress", "JobComplete"]
        );
        let j = &org.bulk.jobs[&id];
        assert!(
            j.succeeded
                .iter()
                .all(|(i, created, _)| *created && i.starts_with("500"))
        );
        let closed = org
            .rows("Case")
            .filter(|c| c["IsClosed"] == json!(true))
            .count();
        assert_eq!(closed, 1);
    }
}
