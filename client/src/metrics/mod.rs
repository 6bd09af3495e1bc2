//! The read API's `/api/metrics` document (see `server/API.md`): fetched,
//! read tolerantly, and shown as text tables by `chatflow-client metrics`;
//! fetched for a load run's window at its end (`metrics.json`, the stored
//! count beside the acked count).
//!
//! Layout, each module importing only those above it:
//! - [`request`]: the API's URL, query parameters, the subcommand's flags;
//! - [`document`]: serde types of the contract, every part a [`document::Part`];
//! - [`json`]: pretty-printing that keeps the server's key order;
//! - [`fetch`]: one `GET /api/metrics` with `ureq` and its typed errors;
//! - [`text`]: tables, sparklines, terminal-safe text;
//! - [`tables`]: the document as text;
//! - [`settle`]: a run's end: poll until the stored count settles.

pub mod request;

pub mod document;
pub mod json;

pub mod fetch;

pub mod text;

pub mod tables;

pub mod settle;

use crate::error::ApiError;
use request::MetricsRequest;

/// Runs `chatflow-client metrics`: fetches the document and returns what
/// to print, the tables or (`--json`) the document as sent, pretty.
pub fn show(request: &MetricsRequest) -> Result<String, ApiError> {
    let api = fetch::Api::new(&request.api, request.timeout);
    let fetched = api.metrics(&request.params)?;
    Ok(if request.json {
        json::pretty(&fetched.body)
    } else {
        tables::render(
            &fetched.document,
            tables::Options {
                lines: request.lines,
            },
        )
    })
}
