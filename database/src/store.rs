//! Storing rows: the two ways a batch is written, each one transaction
//! that also maintains the rollups ([`crate::rollup`]). The consumer's
//! writers decide which to use and what to do when one fails; the data
//! generator uses the fast one.
//!
//! - [`copy_batch`], the fast path: one binary `COPY messages … FROM STDIN
//!   BINARY`; every row is new (a duplicate fails the whole COPY with a
//!   unique violation), so the rollup delta is the whole batch's.
//! - [`insert_batch_deduplicated`], for a batch that may hold rows already
//!   stored (a redelivery): COPY into a per-session staging table, then
//!   `INSERT … ON CONFLICT DO NOTHING RETURNING message_id`; only the rows
//!   that really went in are rolled up.

use std::collections::HashSet;

use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::{ToSql, Type};
use postgres::Client;

use crate::rollup::RollupDelta;
use crate::row::Row;

const COLUMNS: &str =
    "message_id, room_id, user_id, username, message, message_type, client_timestamp, server_timestamp, server_id";
const TYPES: [Type; 9] = [
    Type::UUID,
    Type::INT4,
    Type::INT4,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TIMESTAMPTZ,
    Type::TIMESTAMPTZ,
    Type::TEXT,
];

/// Whether a write maintains the rollups. Always `Maintain` in production;
/// `Skip` exists to measure what they cost (the drain benchmark's
/// `--no-rollups`) and leaves the analytics wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rollups {
    Maintain,
    Skip,
}

fn write_rows<P: AsRef<Row>>(
    writer: &mut BinaryCopyInWriter<'_>,
    batch: &[P],
) -> Result<(), postgres::Error> {
    for row in batch {
        let r = row.as_ref();
        let values: [&(dyn ToSql + Sync); 9] = [
            &r.message_id,
            &r.room_id,
            &r.user_id,
            &r.username,
            &r.message,
            &r.message_type,
            &r.client_timestamp,
            &r.server_timestamp,
            &r.server_id,
        ];
        writer.write(&values)?;
    }
    Ok(())
}

/// The fast path: one binary COPY straight into the partitioned table, and
/// the batch's rollups, in one transaction.
pub fn copy_batch<P: AsRef<Row>>(
    client: &mut Client,
    batch: &[P],
    rollups: Rollups,
) -> Result<(), postgres::Error> {
    let mut tx = client.transaction()?;
    {
        let sink = tx.copy_in(&format!("COPY messages ({COLUMNS}) FROM STDIN BINARY"))?;
        let mut writer = BinaryCopyInWriter::new(sink, &TYPES);
        write_rows(&mut writer, batch)?;
        writer.finish()?;
    }
    if rollups == Rollups::Maintain {
        RollupDelta::of(batch.iter().map(AsRef::as_ref)).apply(&mut tx)?;
    }
    tx.commit()
}

/// The dedup path: COPY into a per-session staging table, insert what is
/// not stored yet, and roll up exactly those rows. Returns how many rows
/// were new.
pub fn insert_batch_deduplicated<P: AsRef<Row>>(
    client: &mut Client,
    batch: &[P],
    rollups: Rollups,
) -> Result<u64, postgres::Error> {
    let mut tx = client.transaction()?;
    tx.batch_execute(
        "CREATE TEMP TABLE IF NOT EXISTS messages_staging (LIKE messages INCLUDING DEFAULTS) ON COMMIT DELETE ROWS",
    )?;
    {
        let sink = tx.copy_in(&format!(
            "COPY messages_staging ({COLUMNS}) FROM STDIN BINARY"
        ))?;
        let mut writer = BinaryCopyInWriter::new(sink, &TYPES);
        write_rows(&mut writer, batch)?;
        writer.finish()?;
    }
    let inserted = tx.query(
        &format!("INSERT INTO messages ({COLUMNS}) SELECT {COLUMNS} FROM messages_staging ON CONFLICT DO NOTHING RETURNING message_id"),
        &[],
    )?;
    let new: HashSet<uuid::Uuid> = inserted.iter().map(|r| r.get(0)).collect();
    if rollups == Rollups::Maintain {
        // A batch may hold the same message twice (delivered twice before
        // either was stored): only its first copy went in.
        let mut seen = HashSet::with_capacity(new.len());
        let rows = batch
            .iter()
            .map(AsRef::as_ref)
            .filter(|r| new.contains(&r.message_id) && seen.insert(r.message_id));
        RollupDelta::of(rows).apply(&mut tx)?;
    }
    tx.commit()?;
    Ok(new.len() as u64)
}
