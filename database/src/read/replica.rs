//! How far a streaming replica is behind its primary, as the replica
//! itself sees it: the API reads from a replica when `DB_READ_HOST` is set,
//! and reports this beside its answers so a reader knows how fresh they are.

use postgres::GenericClient;
use serde::Serialize;

/// A database's replication state.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaState {
    /// `pg_is_in_recovery()`: a standby replaying a primary's WAL. `false`
    /// for a primary (or a promoted replica): nothing to lag behind.
    pub in_recovery: bool,
    /// Seconds of commits received but not yet visible here: 0 when all
    /// WAL received is replayed (an idle primary is not "lag"), otherwise
    /// the age of the last replayed transaction. `None` on a primary, or a
    /// standby that has replayed nothing yet.
    pub lag_seconds: Option<f64>,
    /// WAL bytes received but not yet replayed.
    pub replay_backlog_bytes: Option<i64>,
}

/// One round trip, no locks: cheap enough to sample every second.
pub fn replica_state(client: &mut impl GenericClient) -> Result<ReplicaState, postgres::Error> {
    let row = client.query_one(
        "SELECT pg_is_in_recovery(),
                CASE WHEN NOT pg_is_in_recovery() THEN NULL
                     WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0::float8
                     ELSE EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())::float8
                END,
                CASE WHEN pg_is_in_recovery()
                     THEN pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::int8
                END",
        &[],
    )?;
    Ok(ReplicaState {
        in_recovery: row.get(0),
        lag_seconds: row.get(1),
        replay_backlog_bytes: row.get(2),
    })
}
