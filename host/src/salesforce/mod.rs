//! Sink: Salesforce through its REST API. Every Salesforce call provisor
//! makes goes through [`SalesforceClient`]; rules never see it.

mod bulk;
mod client;

pub(crate) use client::xml_fields;

pub use bulk::{BulkError, BulkOperation, BulkOptions, BulkOutcome, RowOutcome, parse_row_error};
pub use client::{
    ApiError, Credentials, LimitInfo, RecordResult, SalesforceClient, SfError, soql_quote,
};
