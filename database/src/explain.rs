//! `chatflow-datagen explain`: the plan of every read query
//! ([`crate::read`]) as PostgreSQL really ran it, with representative
//! parameters chosen from the data, one file per query.
//!
//! The SQL is never copied here: the session loads `auto_explain`, which
//! logs `EXPLAIN (ANALYZE, BUFFERS)` of every statement at its end, at
//! level NOTICE; the notices come back on the connection
//! (`postgres::Config::notice_callback`) while the real read functions
//! run. So a plan file always shows exactly what the API executes, and
//! follows any change to those functions. Without `auto_explain` (not
//! installed, or not allowed: `LOAD` needs a superuser unless the module
//! sits in `$libdir/plugins`) nothing is written and the error says so.
//!
//! The cases: the busiest room's busiest hour, a 1,000-row page in both
//! orders with and without a cursor, and the quietest room over that hour;
//! the busiest and the median user's history (no window, newest first)
//! and rooms; active users, room counts, the per-second, per-minute and
//! per-hour series and the per-user scan over ragged 1-hour, 1-day and
//! (active users, per user) 7-day windows. `--set NAME=VALUE` captures
//! them under other session settings, to see what a setting would change.
//!
//! Each query runs twice and the second run is kept (a warm cache: the
//! steady state of a busy API); the parameters are looked up on a
//! second connection, so no setup query is captured.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clap::Args;
use parking_lot::Mutex;
use postgres::{Client, NoTls};

use crate::read::active_users::active_users;
use crate::read::analytics::{per_user, room_counts, series};
use crate::read::pages::{page, Order, PageRequest, Position, Subject};
use crate::read::rfc3339;
use crate::read::user_rooms::user_rooms;
use crate::row::{from_unix_micros, unix_micros};
use crate::settings::{DatabaseArgs, DatabaseSettings};
use crate::Window;

/// Capture the plans of every read query.
#[derive(Debug, Clone, Args)]
pub struct ExplainArgs {
    /// Directory for the plan files (one `<name>.txt` per query).
    #[arg(long, default_value = "database/explain")]
    pub out: PathBuf,
    /// A setting for the capturing session, NAME=VALUE (repeatable), to see
    /// what it would change, e.g. --set random_page_cost=1.1.
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub settings: Vec<String>,
    /// Capture under the server's defaults instead of the read API's own
    /// session settings (`chatflow_database::pool::READ_SESSION`).
    #[arg(long)]
    pub server_defaults: bool,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

impl ExplainArgs {
    pub fn into_config(self) -> Result<ExplainConfig, chatflow_protocol::flags::ConfigError> {
        let settings = self
            .settings
            .iter()
            .map(|s| match s.split_once('=') {
                Some((name, value)) if !name.trim().is_empty() => {
                    Ok((name.trim().to_string(), value.trim().to_string()))
                }
                _ => Err(chatflow_protocol::flags::bad(
                    "set",
                    format!("{s:?} is not NAME=VALUE"),
                )),
            })
            .collect::<Result<_, _>>()?;
        Ok(ExplainConfig {
            database: self.database.into_settings()?,
            out_dir: self.out,
            settings,
            server_defaults: self.server_defaults,
        })
    }
}

#[derive(Clone, Debug)]
pub struct ExplainConfig {
    pub database: DatabaseSettings,
    pub out_dir: PathBuf,
    /// Session settings (name, value) applied before capturing (through
    /// `set_config`, so any text is safe), after the read API's own.
    pub settings: Vec<(String, String)>,
    /// Leave out the read API's session settings.
    pub server_defaults: bool,
}

/// The `auto_explain` settings of the capturing session.
const AUTO_EXPLAIN: &str = "\
LOAD 'auto_explain';
SET auto_explain.log_min_duration = 0;
SET auto_explain.log_analyze = on;
SET auto_explain.log_buffers = on;
SET auto_explain.log_timing = on;
SET auto_explain.log_nested_statements = on;
SET auto_explain.log_settings = on;
SET auto_explain.log_level = notice;
SET client_min_messages = notice;";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A page of the busy room: the API's largest.
const ROOM_PAGE_LIMIT: u32 = 1000;
/// A history page: the API's default.
const USER_PAGE_LIMIT: u32 = 100;
const TOP_USERS: u32 = 10;
/// The windows end this long before the data does, off every bucket
/// boundary (ragged edges at both ends: raw partial minutes, partial
/// hours), at 22:17:23.211 for data ending at midnight.
const RAGGED_BEFORE_END_US: i64 = ((3600 + 42 * 60 + 36) * 1_000 + 789) * 1_000;
const HOUR_US: i64 = 3_600_000_000;
const DAY_US: i64 = 24 * HOUR_US;

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error(transparent)]
    Config(#[from] chatflow_protocol::flags::ConfigError),
    #[error("database {database}: {source}")]
    Database {
        database: String,
        #[source]
        source: postgres::Error,
    },
    #[error("auto_explain is not available ({0}); no plans written (it needs the PostgreSQL contrib modules and a superuser to LOAD it)")]
    AutoExplainUnavailable(#[source] postgres::Error),
    #[error("the database has no messages (rollup_second_counts is empty): load some with chatflow-datagen first")]
    Empty,
    #[error("{0}: auto_explain logged no plan")]
    NoPlan(&'static str),
    #[error("writing {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One plan written.
#[derive(Clone, Debug)]
pub struct Captured {
    pub name: &'static str,
    pub path: PathBuf,
    /// What auto_explain measured (the statement's execution).
    pub duration_ms: f64,
}

/// What the plans were taken on.
#[derive(Clone, Debug)]
struct Facts {
    rows: i64,
    first: SystemTime,
    /// One second past the last message's second.
    end: SystemTime,
    database: String,
    size: String,
    version: String,
}

impl Facts {
    fn describe(&self) -> String {
        let days = (unix_micros(self.end) - unix_micros(self.first)) as f64 / DAY_US as f64;
        format!(
            "{} rows over {days:.1} days [{}, {}), database {} ({})",
            self.rows,
            rfc3339(self.first),
            rfc3339(self.end),
            self.database,
            self.size
        )
    }
}

type Run = Box<dyn Fn(&mut Client) -> Result<(), postgres::Error>>;

/// One query to capture.
struct Case {
    name: &'static str,
    function: &'static str,
    parameters: String,
    run: Run,
}

/// Captures every plan into `config.out_dir`; returns what it wrote.
pub fn explain(config: &ExplainConfig) -> Result<Vec<Captured>, ExplainError> {
    let database = &config.database;
    let db = |source| ExplainError::Database {
        database: database.display(),
        source,
    };
    let connection = database.connection_string("chatflow-datagen-explain", CONNECT_TIMEOUT);
    let mut setup = Client::connect(&connection, NoTls).map_err(db)?;
    let facts = facts(&mut setup).map_err(db)?.ok_or(ExplainError::Empty)?;
    let cases = cases(&mut setup, &facts).map_err(db)?;

    let notices: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut explain_config: postgres::Config = connection.parse().map_err(db)?;
    let sink = Arc::clone(&notices);
    explain_config.notice_callback(move |notice| sink.lock().push(notice.message().to_string()));
    let mut client = explain_config.connect(NoTls).map_err(db)?;
    client
        .batch_execute(AUTO_EXPLAIN)
        .map_err(ExplainError::AutoExplainUnavailable)?;
    // The read API's own session settings first (unless asked not to),
    // so the plans are the API's; then what `--set` asks for.
    let mut applied: Vec<(String, String)> = Vec::new();
    if !config.server_defaults {
        applied.extend(
            crate::pool::READ_SESSION
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string())),
        );
    }
    applied.extend(config.settings.iter().cloned());
    for (name, value) in &applied {
        client
            .execute("SELECT set_config($1, $2, false)", &[name, value])
            .map_err(db)?;
    }
    let settings = if applied.is_empty() {
        "server defaults".to_string()
    } else {
        let list: Vec<String> = applied.iter().map(|(n, v)| format!("{n}={v}")).collect();
        if config.server_defaults {
            list.join(", ")
        } else {
            format!("the read API's ({})", list.join(", "))
        }
    };

    std::fs::create_dir_all(&config.out_dir).map_err(|source| ExplainError::Io {
        path: config.out_dir.clone(),
        source,
    })?;
    let captured_at = rfc3339(SystemTime::now());
    let mut written = Vec::with_capacity(cases.len());
    for case in &cases {
        (case.run)(&mut client).map_err(db)?;
        notices.lock().clear();
        (case.run)(&mut client).map_err(db)?;
        let plans: Vec<String> = std::mem::take(&mut *notices.lock())
            .into_iter()
            .filter(|n| n.starts_with("duration:"))
            .collect();
        if plans.is_empty() {
            return Err(ExplainError::NoPlan(case.name));
        }
        let duration_ms = plans.iter().filter_map(|p| duration_ms(p)).sum();
        let mut text = String::new();
        let _ = writeln!(text, "chatflow-datagen explain: {}", case.name);
        let _ = writeln!(text, "function:   {}", case.function);
        let _ = writeln!(text, "parameters: {}", case.parameters);
        let _ = writeln!(text, "dataset:    {}", facts.describe());
        let _ = writeln!(
            text,
            "captured:   {captured_at}, PostgreSQL {}, auto_explain (analyze, buffers, timing); the second of two runs (warm cache)",
            facts.version
        );
        let _ = writeln!(text, "session:    {settings}");
        for plan in &plans {
            let _ = writeln!(text, "\n{}", plan.trim_end());
        }
        let path = config.out_dir.join(format!("{}.txt", case.name));
        std::fs::write(&path, text).map_err(|source| ExplainError::Io {
            path: path.clone(),
            source,
        })?;
        written.push(Captured {
            name: case.name,
            path,
            duration_ms,
        });
    }
    Ok(written)
}

/// `duration: 1.234 ms  plan: …` → 1.234.
fn duration_ms(notice: &str) -> Option<f64> {
    notice
        .strip_prefix("duration:")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn facts(client: &mut Client) -> Result<Option<Facts>, postgres::Error> {
    let row = client.query_one(
        "SELECT coalesce(sum(messages), 0)::int8, min(second), max(second) + interval '1 second',
                current_database()::text, pg_size_pretty(pg_database_size(current_database())),
                current_setting('server_version')
           FROM rollup_second_counts",
        &[],
    )?;
    let rows: i64 = row.get(0);
    if rows == 0 {
        return Ok(None);
    }
    Ok(Some(Facts {
        rows,
        first: row.get(1),
        end: row.get(2),
        database: row.get(3),
        size: row.get(4),
        version: row.get(5),
    }))
}

fn window(end_us: i64, length_us: i64) -> Window {
    Window {
        start: end_us - length_us,
        end: end_us,
    }
}

fn describe(w: Window) -> String {
    format!("[{}, {})", rfc3339(w.start_time()), rfc3339(w.end_time()))
}

/// The busiest room, its busiest hour, the busiest and the median user,
/// and cursors into the room's pages; then every case.
fn cases(setup: &mut Client, facts: &Facts) -> Result<Vec<Case>, postgres::Error> {
    // Rooms, busiest first.
    let rooms: Vec<i32> = setup
        .query(
            "SELECT room_id FROM rollup_room_counts WHERE resolution_s = 3600
              GROUP BY room_id ORDER BY sum(text_messages + join_messages + leave_messages) DESC, room_id",
            &[],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let (room, quiet) = (rooms[0], rooms[rooms.len() - 1]);
    let hour: SystemTime = setup
        .query_one(
            "SELECT bucket FROM rollup_room_counts WHERE resolution_s = 3600 AND room_id = $1
              ORDER BY text_messages + join_messages + leave_messages DESC, bucket LIMIT 1",
            &[&room],
        )?
        .get(0);
    let hour = window(unix_micros(hour) + HOUR_US, HOUR_US);
    let heavy = setup.query_one(
        "SELECT user_id, sum(messages)::int8 FROM user_rooms GROUP BY user_id ORDER BY 2 DESC, 1 LIMIT 1",
        &[],
    )?;
    let (heavy, heavy_messages): (i32, i64) = (heavy.get(0), heavy.get(1));
    let typical = setup.query_one(
        "SELECT user_id, n FROM (SELECT user_id, sum(messages)::int8 AS n FROM user_rooms GROUP BY user_id) t
          ORDER BY n, user_id OFFSET (SELECT count(DISTINCT user_id) / 2 FROM user_rooms) LIMIT 1",
        &[],
    )?;
    let (typical, typical_messages): (i32, i64) = (typical.get(0), typical.get(1));

    let room_page = |order, after| PageRequest {
        subject: Subject::Room(room),
        start: Some(hour.start_time()),
        end: Some(hour.end_time()),
        order,
        limit: ROOM_PAGE_LIMIT,
        after,
    };
    let history = |user, after| PageRequest {
        subject: Subject::User(user),
        start: None,
        end: None,
        order: Order::Desc,
        limit: USER_PAGE_LIMIT,
        after,
    };
    // The cursor of the next page: the first page's last row (or, if the
    // first page is all there is, its middle row: still a real cursor).
    let mut cursor = |request: &PageRequest| -> Result<Option<Position>, postgres::Error> {
        let first = page(setup, request)?;
        Ok(first.next.or_else(|| {
            first
                .messages
                .get(first.messages.len() / 2)
                .map(|m| m.position())
        }))
    };
    let room_asc_cursor = cursor(&room_page(Order::Asc, None))?;
    let room_desc_cursor = cursor(&room_page(Order::Desc, None))?;
    let heavy_cursor = cursor(&history(heavy, None))?;

    let end_us = unix_micros(facts.end) - RAGGED_BEFORE_END_US;
    let (w1h, w1d, w7d) = (
        window(end_us, HOUR_US),
        window(end_us, DAY_US),
        window(end_us, 7 * DAY_US),
    );
    let room_text = format!(
        "room {room} (the busiest), window {} (its busiest hour), limit {ROOM_PAGE_LIMIT}",
        describe(hour)
    );
    let mut cases = Vec::new();
    let mut add = |name, function, parameters: String, run: Run| {
        cases.push(Case {
            name,
            function,
            parameters,
            run,
        })
    };
    const PAGE: &str = "chatflow_database::read::pages::page";
    for (order, name, cursor_name, at) in [
        (
            Order::Asc,
            "room_page_asc",
            "room_page_asc_cursor",
            room_asc_cursor,
        ),
        (
            Order::Desc,
            "room_page_desc",
            "room_page_desc_cursor",
            room_desc_cursor,
        ),
    ] {
        let first = room_page(order, None);
        add(
            name,
            PAGE,
            format!("{room_text}, order {}, no cursor", order.as_str()),
            Box::new(move |c| page(c, &first).map(drop)),
        );
        if let Some(at) = at {
            let next = room_page(order, Some(at));
            add(
                cursor_name,
                PAGE,
                format!(
                    "{room_text}, order {}, cursor after ({}, {})",
                    order.as_str(),
                    rfc3339(from_unix_micros(at.server_timestamp)),
                    at.message_id
                ),
                Box::new(move |c| page(c, &next).map(drop)),
            );
        }
    }
    // The quietest room over the same hour: where a plan that filters a
    // time range instead of using the room's index costs the most.
    let quiet_page = PageRequest {
        subject: Subject::Room(quiet),
        ..room_page(Order::Asc, None)
    };
    add(
        "room_page_quiet_asc",
        PAGE,
        format!(
            "room {quiet} (the quietest), window {} (the busiest room's busiest hour), limit {ROOM_PAGE_LIMIT}, order asc, no cursor",
            describe(hour)
        ),
        Box::new(move |c| page(c, &quiet_page).map(drop)),
    );
    let heavy_text = format!("user {heavy} (the busiest: {heavy_messages} messages)");
    let typical_text = format!("user {typical} (the median: {typical_messages} messages)");
    let history_text = format!("no window, order desc, limit {USER_PAGE_LIMIT}");
    let first = history(heavy, None);
    add(
        "user_page_heavy",
        PAGE,
        format!("{heavy_text}, {history_text}, no cursor"),
        Box::new(move |c| page(c, &first).map(drop)),
    );
    if let Some(at) = heavy_cursor {
        let next = history(heavy, Some(at));
        add(
            "user_page_heavy_cursor",
            PAGE,
            format!(
                "{heavy_text}, {history_text}, cursor after ({}, {})",
                rfc3339(from_unix_micros(at.server_timestamp)),
                at.message_id
            ),
            Box::new(move |c| page(c, &next).map(drop)),
        );
    }
    let first = history(typical, None);
    add(
        "user_page_typical",
        PAGE,
        format!("{typical_text}, {history_text}, no cursor"),
        Box::new(move |c| page(c, &first).map(drop)),
    );
    const USER_ROOMS: &str = "chatflow_database::read::user_rooms::user_rooms";
    add(
        "user_rooms_heavy",
        USER_ROOMS,
        heavy_text.clone(),
        Box::new(move |c| user_rooms(c, heavy).map(drop)),
    );
    add(
        "user_rooms_typical",
        USER_ROOMS,
        typical_text.clone(),
        Box::new(move |c| user_rooms(c, typical).map(drop)),
    );
    for (name, w) in [
        ("active_users_1h", w1h),
        ("active_users_1d", w1d),
        ("active_users_7d", w7d),
    ] {
        add(
            name,
            "chatflow_database::read::active_users::active_users",
            format!("window {} (ragged edges)", describe(w)),
            Box::new(move |c| active_users(c, w).map(drop)),
        );
    }
    for (name, w) in [("room_counts_1h", w1h), ("room_counts_1d", w1d)] {
        add(
            name,
            "chatflow_database::read::analytics::room_counts",
            format!("window {} (ragged edges)", describe(w)),
            Box::new(move |c| room_counts(c, w).map(drop)),
        );
    }
    for (name, w, step) in [
        ("series_second_1h", w1h, 1),
        ("series_minute_1h", w1h, 60),
        ("series_minute_1d", w1d, 60),
        ("series_hour_1h", w1h, 3600),
        ("series_hour_1d", w1d, 3600),
    ] {
        add(
            name,
            "chatflow_database::read::analytics::series",
            format!("window {} (ragged edges), step {step} s", describe(w)),
            Box::new(move |c| series(c, w, step).map(drop)),
        );
    }
    // 7 days: the API's longest window (--api-max-window-hours 168).
    for (name, w) in [
        ("per_user_1h", w1h),
        ("per_user_1d", w1d),
        ("per_user_7d", w7d),
    ] {
        add(
            name,
            "chatflow_database::read::analytics::per_user",
            format!("window {} (ragged edges), top {TOP_USERS}", describe(w)),
            Box::new(move |c| per_user(c, w, TOP_USERS).map(drop)),
        );
    }
    Ok(cases)
}
