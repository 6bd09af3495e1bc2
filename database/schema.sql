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

-- Indexes for the core queries. Each is created on the parent, so every
-- partition (present and future) gets its own. The API pages with keysets
-- on (server_timestamp, message_id), so the page indexes end with both: a
-- page is an index range scan that stops after `limit` rows, whatever the
-- table's size.

-- A room's messages in a time range, in order (either direction):
--   WHERE room_id = $1 AND server_timestamp >= $2 AND server_timestamp < $3
--     AND (server_timestamp, message_id) > ($4, $5)
--   ORDER BY server_timestamp, message_id LIMIT $6
CREATE INDEX IF NOT EXISTS messages_room_page ON messages (room_id, server_timestamp, message_id);

-- A user's history, paged the same way.
CREATE INDEX IF NOT EXISTS messages_user_page ON messages (user_id, server_timestamp, message_id);

-- Per-user analytics over a window (top users, participation), index only:
--   SELECT user_id, room_id, count(*) WHERE server_timestamp >= $1 AND
--   server_timestamp < $2 GROUP BY user_id, room_id
-- and the raw edges of rollup answers (partial minutes), which also need
-- the message type.
CREATE INDEX IF NOT EXISTS messages_time_activity ON messages (server_timestamp) INCLUDE (user_id, room_id, message_type);

-- Upgrade in place: the indexes these replace (before keyset paging and
-- the rollups). Dropping one on the parent drops it on every partition.
DROP INDEX IF EXISTS messages_room_time;
DROP INDEX IF EXISTS messages_user_time;
DROP INDEX IF EXISTS messages_time_user;

-- Rollups: what the analytics read instead of counting raw rows. The
-- writers maintain them in the same transaction as each COPY (see
-- chatflow-database's `rollup`), so they are exactly as fresh as
-- `messages`, and a redelivered message (dropped by ON CONFLICT) is never
-- counted twice. Every bucket is aligned to UTC (Unix-epoch multiples of
-- its width). Writers upsert keys in ascending order, so concurrent
-- writers never deadlock on them.

-- Messages per room and type, per minute (resolution_s = 60) and per hour
-- (3600): totals, type mix, top rooms and series cost O(buckets), not
-- O(messages).
CREATE TABLE IF NOT EXISTS rollup_room_counts (
    resolution_s   integer     NOT NULL CHECK (resolution_s IN (60, 3600)),
    bucket         timestamptz NOT NULL,
    room_id        integer     NOT NULL,
    text_messages  bigint      NOT NULL,
    join_messages  bigint      NOT NULL,
    leave_messages bigint      NOT NULL,
    PRIMARY KEY (resolution_s, bucket, room_id)
);

-- Messages per second, for the per-second series.
CREATE TABLE IF NOT EXISTS rollup_second_counts (
    second   timestamptz NOT NULL PRIMARY KEY,
    messages bigint      NOT NULL
);

-- The users who posted, per minute and per hour: a bitmap whose bit u
-- (counting from the left, 0-based) is user u's (user ids are
-- 1..=100000, bit 0 is unused). Distinct users over any window are the
-- popcount of the OR of its buckets' bitmaps: exact, and O(buckets)
-- whatever the traffic (12.5 KB a bucket, less once compressed).
CREATE TABLE IF NOT EXISTS rollup_active_users (
    resolution_s integer     NOT NULL CHECK (resolution_s IN (60, 3600)),
    bucket       timestamptz NOT NULL,
    users        bit varying(100001) NOT NULL CHECK (length(users) = 100001),
    PRIMARY KEY (resolution_s, bucket)
);

-- lz4, not the default pglz, for the bitmaps: every batch rewrites its
-- minute's and hour's 12.5 KB value, and pglz is slowest on the sparse
-- bitmaps a minute starts with (0.87 ms an update against lz4's 0.13; it
-- was 14% of PostgreSQL's CPU in a full-path profile). The table is
-- ~35-40% larger; database/README.md ("What they cost") has the loads.
-- New values only: a bucket is recompressed at its next update. A server
-- built without lz4 keeps pglz (both are exact). Altered only when not yet
-- lz4, so a re-run takes no lock the writers would wait on.
DO $$
BEGIN
    IF (SELECT attcompression FROM pg_attribute
        WHERE attrelid = 'rollup_active_users'::regclass AND attname = 'users') <> 'l' THEN
        ALTER TABLE rollup_active_users ALTER COLUMN users SET COMPRESSION lz4;
    END IF;
EXCEPTION WHEN feature_not_supported THEN
    NULL;
END
$$;

-- The rooms each user posted in, all time: message count and last
-- activity (a user's rooms are one index range, whatever their history).
CREATE TABLE IF NOT EXISTS user_rooms (
    user_id       integer     NOT NULL,
    room_id       integer     NOT NULL,
    messages      bigint      NOT NULL,
    last_activity timestamptz NOT NULL,
    PRIMARY KEY (user_id, room_id)
);

-- A bitmap of rollup_active_users' shape with the bits of `users` set.
-- Built in a bytea (set_bit is O(1) there) and cast through hex: 0.08 ms a
-- bitmap, against 11 ms for the text-array form it replaces. bytea counts
-- bits from the low end of each byte, bit strings from the left, hence the
-- mirrored index.
CREATE OR REPLACE FUNCTION chatflow_user_bitmap(users integer[]) RETURNS bit varying
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    bytes bytea := decode(repeat('00', 12501), 'hex');
    u integer;
BEGIN
    FOREACH u IN ARRAY coalesce(users, '{}') LOOP
        bytes := set_bit(bytes, (u / 8) * 8 + 7 - u % 8, 1);
    END LOOP;
    RETURN substring(('x' || encode(bytes, 'hex'))::bit(100008) FROM 1 FOR 100001)::bit varying;
END
$$;

-- Recomputes every rollup from `messages` (the repair tool, and the
-- upgrade of a database that has messages from before the rollups). Rows
-- go in in primary-key order, as the writers' upserts leave them, so a
-- range of buckets stays on few pages.
-- Writers are held off meanwhile (SHARE lock: reads go on), so the result
-- is exact. Returns the number of messages counted.
CREATE OR REPLACE FUNCTION chatflow_rebuild_rollups() RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    counted bigint;
BEGIN
    LOCK TABLE messages IN SHARE MODE;
    TRUNCATE rollup_room_counts, rollup_second_counts, rollup_active_users, user_rooms;
    INSERT INTO rollup_room_counts
    SELECT r.resolution_s, date_bin(make_interval(secs => r.resolution_s), m.server_timestamp, 'epoch'),
           m.room_id,
           count(*) FILTER (WHERE m.message_type = 'TEXT'),
           count(*) FILTER (WHERE m.message_type = 'JOIN'),
           count(*) FILTER (WHERE m.message_type = 'LEAVE')
    FROM messages m CROSS JOIN (VALUES (60), (3600)) AS r (resolution_s)
    GROUP BY 1, 2, 3
    ORDER BY 1, 2, 3;
    INSERT INTO rollup_second_counts
    SELECT date_bin('1 second', server_timestamp, 'epoch'), count(*) FROM messages GROUP BY 1 ORDER BY 1;
    INSERT INTO rollup_active_users
    SELECT r.resolution_s, b.bucket, chatflow_user_bitmap(b.users)
    FROM (VALUES (60), (3600)) AS r (resolution_s)
    CROSS JOIN LATERAL (
        SELECT date_bin(make_interval(secs => r.resolution_s), server_timestamp, 'epoch') AS bucket,
               array_agg(DISTINCT user_id) AS users
        FROM messages GROUP BY 1
    ) b
    ORDER BY 1, 2;
    INSERT INTO user_rooms
    SELECT user_id, room_id, count(*), max(server_timestamp) FROM messages GROUP BY 1, 2 ORDER BY 1, 2;
    SELECT coalesce(sum(messages), 0) INTO counted FROM rollup_second_counts;
    RETURN counted;
END
$$;

-- Fills the rollups of a database upgraded from before them: only when
-- they are empty while messages exist (a no-op on every later run).
CREATE OR REPLACE FUNCTION chatflow_backfill_rollups() RETURNS bigint
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM rollup_second_counts) OR NOT EXISTS (SELECT 1 FROM messages) THEN
        RETURN 0;
    END IF;
    RETURN chatflow_rebuild_rollups();
END
$$;

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
