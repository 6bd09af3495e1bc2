//! PostgreSQL errors in one line each, for logs, health documents and API
//! answers.

use std::fmt::Write as _;

/// A failed statement in one line. `postgres::Error`'s own `Display` stops
/// at "db error" or "error communicating with the server"; the reason is in
/// the server's report or the error's source. The report's DETAIL is left
/// out: for a constraint it quotes the whole row, message text included.
pub fn describe(error: &postgres::Error) -> String {
    let mut text = error.to_string();
    if let Some(db) = error.as_db_error() {
        let _ = write!(text, ": {} (SQLSTATE {}", db.message(), db.code().code());
        if let Some(context) = db.where_() {
            // E.g. "COPY messages, line 3, column message" (binary COPY
            // names the column, never its value).
            let _ = write!(text, "; {}", context.replace('\n', "; "));
        }
        text.push(')');
    } else if let Some(source) = std::error::Error::source(error) {
        let _ = write!(text, ": {source}");
    }
    text
}
