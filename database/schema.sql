-- ChatFlow's PostgreSQL schema. Idempotent: every statement may run again
-- on a database that already has it (setup_database.sh applies it on every
-- run).
--
-- One row per accepted message. The table is partitioned by day on the
-- server timestamp (UTC days); a DEFAULT partition catches any row whose
-- day has no partition yet, so an insert never fails for lack of one, and
-- chatflow_ensure_partitions() moves such rows into their day when it
-- creates it.

CREATE TABLE IF NOT EXISTS messages (
    -- UUIDv7 assigned once by the server: time-ordered, unique across servers.
    message_id       uuid        NOT NULL,
    room_id          integer     NOT NULL CHECK (room_id >= 1),
    user_id          integer     NOT NULL CHECK (user_id BETWEEN 1 AND 100000),
    username         text        NOT NULL CHECK (length(username) BETWEEN 3 AND 20),
    message          text        NOT NULL,
    message_type     text        NOT NULL CHECK (message_type IN ('TEXT', 'JOIN', 'LEAVE')),
    -- The sender's clock, as the sender stated it.
    client_timestamp timestamptz NOT NULL,
    -- The accepting server's clock: the partition key. It travels in the
    -- queue envelope, so a redelivered message has the same key and the same
    -- primary key, and ON CONFLICT can drop the duplicate.
    server_timestamp timestamptz NOT NULL,
    server_id        text        NOT NULL,
    PRIMARY KEY (message_id, server_timestamp)
) PARTITION BY RANGE (server_timestamp);

CREATE TABLE IF NOT EXISTS messages_default PARTITION OF messages DEFAULT;

-- Indexes for the four core queries. Each is created on the parent, so
-- every partition (present and future) gets its own.

-- Q1: a room's messages in a time range, in order:
--   WHERE room_id = $1 AND server_timestamp >= $2 AND server_timestamp < $3
--   ORDER BY server_timestamp
CREATE INDEX IF NOT EXISTS messages_room_time ON messages (room_id, server_timestamp);

-- Q2: a user's history, newest first:
--   WHERE user_id = $1 [AND server_timestamp range] ORDER BY server_timestamp DESC
-- Q4: the rooms a user was in, with last activity (index-only, thanks to
--   INCLUDE): SELECT room_id, max(server_timestamp) WHERE user_id = $1 GROUP BY room_id
CREATE INDEX IF NOT EXISTS messages_user_time ON messages (user_id, server_timestamp) INCLUDE (room_id);

-- Q3: distinct active users in a window (index-only over the window):
--   SELECT count(DISTINCT user_id) WHERE server_timestamp >= $1 AND server_timestamp < $2
CREATE INDEX IF NOT EXISTS messages_time_user ON messages (server_timestamp) INCLUDE (user_id);

-- The partition of one UTC day: messages_YYYYMMDD.
CREATE OR REPLACE FUNCTION chatflow_partition_name(day date) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT 'messages_' || to_char(day, 'YYYYMMDD')
$$;

-- Creates the partitions of `days` UTC days from `first_day` that do not
-- exist yet, moving any rows of those days out of the DEFAULT partition
-- (attaching a partition whose rows sit in DEFAULT would fail otherwise).
-- Returns how many partitions it created. Safe to run concurrently: a
-- transaction-level advisory lock serialises callers.
CREATE OR REPLACE FUNCTION chatflow_ensure_partitions(first_day date, days integer)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    day date;
    name text;
    low timestamptz;
    high timestamptz;
    created integer := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('chatflow_ensure_partitions'));
    FOR i IN 0 .. days - 1 LOOP
        day := first_day + i;
        name := chatflow_partition_name(day);
        CONTINUE WHEN to_regclass(name) IS NOT NULL;
        low := day::timestamp AT TIME ZONE 'UTC';
        high := (day + 1)::timestamp AT TIME ZONE 'UTC';
        EXECUTE format('CREATE TABLE %I (LIKE messages INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', name);
        EXECUTE format(
            'WITH moved AS (DELETE FROM messages_default WHERE server_timestamp >= %L AND server_timestamp < %L RETURNING *)
             INSERT INTO %I SELECT * FROM moved', low, high, name);
        EXECUTE format('ALTER TABLE messages ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', name, low, high);
        created := created + 1;
    END LOOP;
    RETURN created;
END
$$;
