//! Bulk API 2.0 ingest through [`SalesforceClient`] (salesforce.md §8):
//! create a job, upload CSV once, close it, poll with a capped backoff,
//! read the successful and failed results and map every input row back to
//! its outcome. Every call takes the client's one request path, so
//! authentication, retries and limit pacing are the same as for REST.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Map, Value, json};

use super::client::Body;
use super::{ApiError, SalesforceClient, SfError};

/// What a job does with its rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BulkOperation {
    /// Create records (no `Id` column).
    Insert,
    /// Update records by `Id`.
    Update,
    /// Update when the key matches, else create.
    Upsert {
        /// The External ID (or `Id`) field that keys the rows.
        external_id_field: String,
    },
    /// Delete records by `Id` (to the recycle bin).
    Delete,
}

impl BulkOperation {
    fn name(&self) -> &'static str {
        match self {
            Self::Insert => "insert",
            Self::Update => "update",
            Self::Upsert { .. } => "upsert",
            Self::Delete => "delete",
        }
    }
}

/// Tuning of [`SalesforceClient::ingest_with`].
#[derive(Debug, Clone)]
pub struct BulkOptions {
    /// Rows per job; more rows are split over several jobs run one after
    /// the other. Default 10,000: Salesforce processes a job in internal
    /// batches of 10,000 records, each counting against the 15,000 daily
    /// batches, so one job is one batch; a failed job loses at most that
    /// many rows, and even wide rows (15 KB each) stay far below the
    /// 150 MB upload limit.
    pub max_rows_per_job: usize,
    /// Bytes of CSV per job (default 100 MB, below the 150 MB limit).
    pub max_bytes_per_job: usize,
    /// First wait between polls of a closed job; doubles up to `poll_max`.
    pub poll_initial: Duration,
    /// Longest wait between polls.
    pub poll_max: Duration,
    /// Longest wait for one job to finish; then it is aborted.
    pub timeout: Duration,
}

impl Default for BulkOptions {
    fn default() -> Self {
        Self {
            max_rows_per_job: 10_000,
            max_bytes_per_job: 100 * 1024 * 1024,
            poll_initial: Duration::from_millis(500),
            poll_max: Duration::from_secs(10),
            timeout: Duration::from_secs(30 * 60),
        }
    }
}

/// The outcome of one input row.
#[derive(Debug, Clone, PartialEq)]
pub enum RowOutcome {
    /// Written; `created` is true for inserted records.
    Success { id: String, created: bool },
    /// Refused by Salesforce; `id` is the record's id where the row had one.
    Failed { id: Option<String>, error: ApiError },
    /// Not processed (the job stopped before reaching it).
    Unprocessed,
}

/// Outcomes of an ingest, one per input row and in input order.
#[derive(Debug, Clone, PartialEq)]
pub struct BulkOutcome {
    /// The ids of the jobs used, in order.
    pub jobs: Vec<String>,
    /// One outcome per input row.
    pub rows: Vec<RowOutcome>,
}

impl BulkOutcome {
    /// Rows written.
    pub fn succeeded(&self) -> usize {
        self.rows
            .iter()
            .filter(|r| matches!(r, RowOutcome::Success { .. }))
            .count()
    }

    /// Rows refused.
    pub fn failed(&self) -> usize {
        self.rows
            .iter()
            .filter(|r| matches!(r, RowOutcome::Failed { .. }))
            .count()
    }
}

/// Why an ingest did not complete.
#[derive(Debug, thiserror::Error)]
pub enum BulkError {
    /// A call to Salesforce failed (the job, if any, was aborted).
    #[error("Bulk API job {}: {source}", .job_id.as_deref().unwrap_or("(not created)"))]
    Api {
        job_id: Option<String>,
        #[source]
        source: SfError,
    },
    /// Salesforce ended the job as `Failed` or `Aborted`; rows of earlier
    /// jobs of the same ingest were written.
    #[error("Bulk API job {job_id} ended {state}: {message}")]
    Job {
        job_id: String,
        state: String,
        message: String,
    },
    /// The job did not finish in time and was aborted.
    #[error("Bulk API job {job_id} did not finish within {waited:?}; aborted")]
    Timeout { job_id: String, waited: Duration },
    /// Rows could not be written as CSV, or results not read back.
    #[error("Bulk API job {}: {detail}", .job_id.as_deref().unwrap_or("(not created)"))]
    Csv {
        job_id: Option<String>,
        detail: String,
    },
}

/// One CSV cell for a JSON value: `#N/A` clears a field, missing keys
/// leave it alone.
fn cell(v: Option<&Value>) -> String {
    match v {
        None => String::new(),
        Some(Value::Null) => "#N/A".into(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// Parses `sf__Error`: `CODE:message:fields` (the message may contain
/// colons; fields are comma-separated API names, maybe followed by ` --`).
pub fn parse_row_error(text: &str) -> ApiError {
    let (code, rest) = text.split_once(':').unwrap_or((text, ""));
    let (message, fields) = match rest.rsplit_once(':') {
        Some((m, f)) => {
            let f = f.trim().trim_end_matches("--").trim();
            let names = f
                .split(',')
                .map(str::trim)
                .filter(|x| !x.is_empty())
                .collect::<Vec<_>>();
            let plausible = names.iter().all(|n| {
                n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
            });
            if plausible {
                (m.to_string(), names.iter().map(|s| s.to_string()).collect())
            } else {
                (rest.trim_end_matches("--").trim().to_string(), Vec::new())
            }
        }
        None => (rest.trim_end_matches("--").trim().to_string(), Vec::new()),
    };
    ApiError {
        code: code.trim().to_string(),
        message,
        fields,
    }
}

/// Writes rows as CSV over `columns`; every value quoted as needed.
fn to_csv(columns: &[String], rows: &[Map<String, Value>]) -> Result<String, String> {
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::new());
    w.write_record(columns).map_err(|e| e.to_string())?;
    for r in rows {
        w.write_record(columns.iter().map(|c| cell(r.get(c))))
            .map_err(|e| e.to_string())?;
    }
    let bytes = w.into_inner().map_err(|e| e.to_string())?;
    String::from_utf8(bytes).map_err(|e| e.to_string())
}

/// A result row: the `sf__` cells, then the input cells.
type ResultRow = (Vec<String>, Vec<String>);

/// Reads result rows, split after `prefix` cells (the input cells key them).
fn read_results(text: &str, prefix: usize) -> Result<Vec<ResultRow>, String> {
    let mut r = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(text.as_bytes());
    let mut out = Vec::new();
    for rec in r.records() {
        let rec = rec.map_err(|e| format!("unreadable result CSV: {e}"))?;
        let cells: Vec<String> = rec.iter().map(str::to_string).collect();
        if cells.len() < prefix {
            return Err(format!("result row with {} columns", cells.len()));
        }
        let (head, tail) = cells.split_at(prefix);
        out.push((head.to_vec(), tail.to_vec()));
    }
    Ok(out)
}

/// Columns of a set of rows, in first-seen order.
fn columns_of(rows: &[Map<String, Value>]) -> Vec<String> {
    let mut cols: Vec<String> = Vec::new();
    for r in rows {
        for k in r.keys() {
            if k != "attributes" && !cols.contains(k) {
                cols.push(k.clone());
            }
        }
    }
    cols
}

/// Splits rows into jobs by row count and CSV size.
fn chunks(rows: &[Map<String, Value>], opts: &BulkOptions) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0usize);
    for (i, r) in rows.iter().enumerate() {
        // Approximate CSV size: values plus quoting and separators.
        let size: usize = r.values().map(|v| cell(Some(v)).len() + 3).sum::<usize>() + 1;
        let full = i - start >= opts.max_rows_per_job.max(1)
            || (i > start && bytes + size > opts.max_bytes_per_job);
        if full {
            out.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    if start < rows.len() {
        out.push(start..rows.len());
    }
    out
}

impl SalesforceClient {
    /// Writes `rows` of `object` through Bulk API 2.0 with default
    /// [`BulkOptions`]; see [`SalesforceClient::ingest_with`].
    pub async fn ingest(
        &self,
        object: &str,
        operation: BulkOperation,
        rows: &[Map<String, Value>],
    ) -> Result<BulkOutcome, BulkError> {
        self.ingest_with(object, operation, rows, &BulkOptions::default())
            .await
    }

    /// Writes `rows` (field name → value; `Id` for updates and deletes,
    /// `null` clears a field) of one object through Bulk API 2.0, split
    /// into jobs per `opts`, and returns each row's outcome in input order.
    /// A job that fails on the client side is aborted; a job Salesforce
    /// ends as `Failed` or `Aborted` is an error naming it.
    pub async fn ingest_with(
        &self,
        object: &str,
        operation: BulkOperation,
        rows: &[Map<String, Value>],
        opts: &BulkOptions,
    ) -> Result<BulkOutcome, BulkError> {
        let mut outcome = BulkOutcome {
            jobs: Vec::new(),
            rows: Vec::with_capacity(rows.len()),
        };
        for range in chunks(rows, opts) {
            let part = rows.get(range).unwrap_or_default();
            let (job, results) = self.run_job(object, &operation, part, opts).await?;
            outcome.jobs.push(job);
            outcome.rows.extend(results);
        }
        Ok(outcome)
    }

    fn jobs_path(&self) -> String {
        format!("{}/jobs/ingest", self.data_path())
    }

    /// One job, start to finish.
    async fn run_job(
        &self,
        object: &str,
        operation: &BulkOperation,
        rows: &[Map<String, Value>],
        opts: &BulkOptions,
    ) -> Result<(String, Vec<RowOutcome>), BulkError> {
        let columns = columns_of(rows);
        let csv = to_csv(&columns, rows).map_err(|detail| BulkError::Csv {
            job_id: None,
            detail: format!("cannot write the rows as CSV: {detail}"),
        })?;
        let mut def = json!({"object": object, "operation": operation.name(), "contentType": "CSV", "lineEnding": "LF", "columnDelimiter": "COMMA"});
        if let BulkOperation::Upsert { external_id_field } = operation {
            def["externalIdFieldName"] = json!(external_id_field);
        }
        let created = self
            .call_json(Method::POST, &self.jobs_path(), Some(&def))
            .await
            .map_err(|source| BulkError::Api {
                job_id: None,
                source,
            })?;
        let job_id = created
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| BulkError::Csv {
                job_id: None,
                detail: "the job creation answer has no id".into(),
            })?
            .to_string();
        match self.drive(&job_id, &csv, columns.len(), rows, opts).await {
            Ok(r) => Ok((job_id, r)),
            Err(e) => {
                if !matches!(e, BulkError::Job { .. }) {
                    self.abort(&job_id).await;
                }
                Err(e)
            }
        }
    }

    /// Upload, close, poll, read results.
    async fn drive(
        &self,
        job_id: &str,
        csv: &str,
        width: usize,
        rows: &[Map<String, Value>],
        opts: &BulkOptions,
    ) -> Result<Vec<RowOutcome>, BulkError> {
        let api = |source| BulkError::Api {
            job_id: Some(job_id.to_string()),
            source,
        };
        let job_path = format!("{}/{job_id}", self.jobs_path());
        self.send(
            Method::PUT,
            &format!("{job_path}/batches"),
            Body::Text {
                content_type: "text/csv",
                text: csv,
            },
            &[],
        )
        .await
        .map_err(api)?;
        self.call_json(
            Method::PATCH,
            &job_path,
            Some(&json!({"state": "UploadComplete"})),
        )
        .await
        .map_err(api)?;
        let started = Instant::now();
        let mut wait = opts.poll_initial;
        let info = loop {
            let info = self
                .call_json(Method::GET, &job_path, None)
                .await
                .map_err(api)?;
            let state = info.get("state").and_then(Value::as_str).unwrap_or("");
            match state {
                "JobComplete" => break info,
                "Failed" | "Aborted" => {
                    return Err(BulkError::Job {
                        job_id: job_id.to_string(),
                        state: state.to_string(),
                        message: info
                            .get("errorMessage")
                            .and_then(Value::as_str)
                            .unwrap_or("(no errorMessage)")
                            .to_string(),
                    });
                }
                _ => {}
            }
            if started.elapsed() + wait > opts.timeout {
                return Err(BulkError::Timeout {
                    job_id: job_id.to_string(),
                    waited: started.elapsed(),
                });
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(opts.poll_max);
        };
        let processed = info
            .get("numberRecordsProcessed")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let bad = |detail: String| BulkError::Csv {
            job_id: Some(job_id.to_string()),
            detail,
        };
        // Input rows keyed by their CSV cells; identical rows are
        // interchangeable, so they queue under one key.
        let columns = columns_of(rows);
        let mut pending: HashMap<Vec<String>, VecDeque<usize>> = HashMap::new();
        for (i, r) in rows.iter().enumerate() {
            let key: Vec<String> = columns.iter().map(|c| cell(r.get(c))).collect();
            pending.entry(key).or_default().push_back(i);
        }
        let mut out = vec![RowOutcome::Unprocessed; rows.len()];
        let mut place = |key: Vec<String>, o: RowOutcome| -> Result<(), BulkError> {
            let i = pending
                .get_mut(&key)
                .and_then(VecDeque::pop_front)
                .ok_or_else(|| bad(format!("a result row matches no input row: {key:?}")))?;
            if let Some(slot) = out.get_mut(i) {
                *slot = o;
            }
            Ok(())
        };
        let ok_text = self
            .results(&format!("{job_path}/successfulResults/"))
            .await
            .map_err(api)?;
        for (head, key) in read_results(&ok_text, 2).map_err(&bad)? {
            check_width(&key, width).map_err(&bad)?;
            place(
                key,
                RowOutcome::Success {
                    id: head[0].clone(),
                    created: head[1].eq_ignore_ascii_case("true"),
                },
            )?;
        }
        let failed_text = self
            .results(&format!("{job_path}/failedResults/"))
            .await
            .map_err(api)?;
        for (head, key) in read_results(&failed_text, 2).map_err(&bad)? {
            check_width(&key, width).map_err(&bad)?;
            place(
                key,
                RowOutcome::Failed {
                    id: Some(head[0].clone()).filter(|s| !s.is_empty()),
                    error: parse_row_error(&head[1]),
                },
            )?;
        }
        let placed = out
            .iter()
            .filter(|o| !matches!(o, RowOutcome::Unprocessed))
            .count() as u64;
        if placed != processed {
            return Err(bad(format!(
                "the job reports {processed} processed rows but its results list {placed}"
            )));
        }
        Ok(out)
    }

    /// GET a CSV result set.
    async fn results(&self, path: &str) -> Result<String, SfError> {
        let (_, _, text) = self
            .send(Method::GET, path, Body::None, &[("Accept", "text/csv")])
            .await?;
        Ok(text)
    }

    async fn call_json(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, SfError> {
        let body = body.map_or(Body::None, Body::Json);
        let (url, status, text) = self.send(method, path, body, &[]).await?;
        serde_json::from_str(&text).map_err(|e| SfError::Malformed {
            url,
            detail: format!("HTTP {status}, body is not JSON ({e})"),
        })
    }

    /// Best-effort abort after a client-side failure.
    async fn abort(&self, job_id: &str) {
        let path = format!("{}/{job_id}", self.jobs_path());
        if let Err(e) = self
            .call_json(Method::PATCH, &path, Some(&json!({"state": "Aborted"})))
            .await
        {
            tracing::warn!(job_id, error = %e, "could not abort the Bulk API job");
        }
    }
}

fn check_width(key: &[String], width: usize) -> Result<(), String> {
    if key.len() == width {
        Ok(())
    } else {
        Err(format!(
            "a result row has {} input columns, the upload had {width}",
            key.len()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_errors_keep_colons_in_messages() {
        let e = parse_row_error(
            "REQUIRED_FIELD_MISSING:Required fields are missing: [LastName]:LastName --",
        );
        assert_eq!(e.code, "REQUIRED_FIELD_MISSING");
        assert_eq!(e.message, "Required fields are missing: [LastName]");
        assert_eq!(e.fields, vec!["LastName"]);
        let e = parse_row_error("CANNOT_UPDATE_CONVERTED_LEAD:cannot reference converted lead: --");
        assert_eq!(e.message, "cannot reference converted lead");
        assert!(e.fields.is_empty());
        let e = parse_row_error(
            "INACTIVE_OWNER_OR_USER:operation performed with inactive user [005x] as owner of lead:",
        );
        assert_eq!(
            e.message,
            "operation performed with inactive user [005x] as owner of lead"
        );
    }

    #[test]
    fn csv_quotes_and_splits() {
        let rows: Vec<Map<String, Value>> = (0..5)
            .map(|i| {
                let mut m = Map::new();
                m.insert("Id".into(), json!(format!("00Q{i}")));
                m.insert("Subject".into(), json!("a, \"b\"\nc"));
                m.insert("OwnerId".into(), Value::Null);
                m
            })
            .collect();
        let text = to_csv(&columns_of(&rows), &rows).expect("csv");
        // Map keys are sorted, so are the columns.
        assert!(
            text.starts_with("Id,OwnerId,Subject\n00Q0,#N/A,\"a, \"\"b\"\"\nc\"\n"),
            "{text}"
        );
        let opts = BulkOptions {
            max_rows_per_job: 2,
            ..BulkOptions::default()
        };
        assert_eq!(chunks(&rows, &opts), vec![0..2, 2..4, 4..5]);
    }
}
