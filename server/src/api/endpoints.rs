//! The endpoints of server/API.md: each turns checked parameters into
//! queries (`chatflow-database`'s `read`) and the queries' results into
//! its JSON document. A document that needs several queries reads them in
//! one read-only REPEATABLE READ transaction, so its numbers agree with
//! each other even while messages keep arriving (the analytics' total is
//! exactly the sum of its series and of its per-user counts).

use std::collections::BTreeMap;
use std::time::SystemTime;

use chatflow_database::read::active_users::active_users;
use chatflow_database::read::analytics::{
    per_user, power_of_two_buckets, room_counts, series, PerUser, Series, TopUser,
};
use chatflow_database::read::pages::{page, Order, PageRequest, StoredMessage, Subject};
use chatflow_database::read::rfc3339;
use chatflow_database::read::user_rooms::{user_rooms, UserRoom};
use chatflow_database::rollup::{TypeCounts, HOUR, MINUTE};
use chatflow_database::Window;
use postgres::{GenericClient, IsolationLevel};
use serde::Serialize;

use super::cursor;
use super::params::{aggregate_window, Params};
use super::reply::{ApiError, Timings};
use super::routes::Route;
use super::ApiContext;

/// Parameters each endpoint takes (anything else is a 400).
pub fn allowed(route: &Route) -> &'static [&'static str] {
    match route {
        Route::RoomMessages(_) | Route::UserMessages(_) => {
            &["start", "end", "limit", "cursor", "order"]
        }
        Route::UserRooms(_) => &[],
        Route::ActiveUsers => &["start", "end"],
        Route::Analytics => &["start", "end", "topN"],
        Route::Metrics => &["start", "end", "roomId", "userId", "limit", "topN"],
        Route::RoomPresence(_) => super::presence::ROOM_PARAMS,
        Route::Presence => &[],
    }
}

/// Page sizes: 100 unless asked, at most 1,000.
const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 1000;
const DEFAULT_TOP: i64 = 10;
const MAX_TOP: i64 = 100;
/// Series resolution: per second up to an hour (3,600 points), per minute
/// up to a day (1,440), per hour always.
const PER_SECOND_UP_TO: f64 = 3600.0;
const PER_MINUTE_UP_TO: f64 = 86_400.0;

/// Runs `route` and builds its document.
pub fn run(
    context: &ApiContext,
    route: Route,
    params: &Params,
    timings: &mut Timings,
) -> Result<Vec<u8>, ApiError> {
    match route {
        Route::RoomMessages(room) => {
            json(&messages(context, Subject::Room(room), params, timings)?)
        }
        Route::UserMessages(user) => {
            json(&messages(context, Subject::User(user), params, timings)?)
        }
        Route::UserRooms(user) => {
            let rooms = query(context, timings, "userRooms", |c| user_rooms(c, user))?;
            json(&UserRoomsDoc {
                user_id: user,
                rooms,
            })
        }
        Route::ActiveUsers => {
            let window = aggregate_window(params, context.max_window)?;
            let count = query(context, timings, "activeUsers", |c| active_users(c, window))?;
            json(&ActiveUsersDoc {
                window: WindowDoc::of(window),
                active_users: count,
            })
        }
        Route::Analytics => {
            let window = aggregate_window(params, context.max_window)?;
            let top = params.number("topN", 1..=MAX_TOP)?.unwrap_or(DEFAULT_TOP) as u32;
            let mut connection = checkout(context, timings)?;
            let mut tx = snapshot(context, &mut connection, timings)?;
            let analytics = analytics(context, &mut tx, window, top, timings)?;
            json(&analytics.document)
        }
        Route::Metrics => json(&metrics(context, params, timings)?),
        Route::RoomPresence(room) => super::presence::room(context, room, params, timings),
        Route::Presence => super::presence::counts(context),
    }
}

/// The document's JSON (serialised once, straight to bytes).
fn json<T: Serialize>(document: &T) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(document)
        .map_err(|e| ApiError::internal(format!("cannot serialise the answer: {e}")))
}

fn checkout(
    context: &ApiContext,
    timings: &mut Timings,
) -> Result<chatflow_database::pool::Connection, ApiError> {
    timings
        .time("poolCheckout", || context.pool.get())
        .map_err(|e| ApiError::from_pool(&e))
}

/// A read-only REPEATABLE READ transaction: every query of a document sees
/// the same snapshot.
fn snapshot<'a>(
    context: &ApiContext,
    connection: &'a mut chatflow_database::pool::Connection,
    timings: &mut Timings,
) -> Result<postgres::Transaction<'a>, ApiError> {
    timings
        .time("begin", || {
            connection
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
        })
        .map_err(|e| context.query_error(&e))
}

/// One query on a pooled connection of its own.
fn query<T>(
    context: &ApiContext,
    timings: &mut Timings,
    name: &'static str,
    f: impl FnOnce(&mut postgres::Client) -> Result<T, postgres::Error>,
) -> Result<T, ApiError> {
    let mut connection = checkout(context, timings)?;
    timings
        .time(name, || f(&mut connection))
        .map_err(|e| context.query_error(&e))
}

/// `{"start","end"}`; `null` for an unbounded side.
#[derive(Clone, Debug, Serialize)]
pub struct WindowDoc {
    start: Option<String>,
    end: Option<String>,
}

impl WindowDoc {
    fn of(window: Window) -> WindowDoc {
        WindowDoc {
            start: Some(rfc3339(window.start_time())),
            end: Some(rfc3339(window.end_time())),
        }
    }

    fn open(start: Option<SystemTime>, end: Option<SystemTime>) -> WindowDoc {
        WindowDoc {
            start: start.map(rfc3339),
            end: end.map(rfc3339),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PageDoc {
    #[serde(skip_serializing_if = "Option::is_none")]
    room_id: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<i32>,
    window: WindowDoc,
    order: &'static str,
    limit: u32,
    count: usize,
    messages: Vec<StoredMessage>,
    next_cursor: Option<String>,
}

/// `GET /api/rooms/{roomId}/messages` and `/api/users/{userId}/messages`.
fn messages(
    context: &ApiContext,
    subject: Subject,
    params: &Params,
    timings: &mut Timings,
) -> Result<PageDoc, ApiError> {
    let start = params.time("start")?;
    let end = params.time("end")?;
    if let (Some(s), Some(e)) = (start, end) {
        if s >= e {
            return Err(ApiError::bad_request(
                Some("start"),
                "start must be before end",
            ));
        }
    }
    let order = params.order()?;
    let limit = params
        .number("limit", 1..=MAX_LIMIT)?
        .unwrap_or(DEFAULT_LIMIT) as u32;
    let after = match params.text("cursor") {
        Some(text) => Some(
            cursor::decode(text, subject, order)
                .map_err(|e| ApiError::bad_request(Some("cursor"), e.to_string()))?,
        ),
        None => None,
    };
    let request = PageRequest {
        subject,
        start,
        end,
        order,
        limit,
        after,
    };
    let name = match subject {
        Subject::Room(_) => "roomMessages",
        Subject::User(_) => "userMessages",
    };
    let found = query(context, timings, name, |c| page(c, &request))?;
    let (room_id, user_id) = match subject {
        Subject::Room(id) => (Some(id), None),
        Subject::User(id) => (None, Some(id)),
    };
    Ok(PageDoc {
        room_id,
        user_id,
        window: WindowDoc::open(start, end),
        order: order.as_str(),
        limit,
        count: found.messages.len(),
        messages: found.messages,
        next_cursor: found
            .next
            .map(|position| cursor::encode(subject, order, position)),
    })
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UserRoomsDoc {
    user_id: i32,
    rooms: Vec<UserRoom>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ActiveUsersDoc {
    window: WindowDoc,
    active_users: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AnalyticsDoc {
    window: WindowDoc,
    total_messages: i64,
    message_types: MessageTypes,
    active_users: i64,
    messages_per_second: f64,
    series: SeriesDoc,
    /// `None` (with `per_user_omitted` saying why) for windows longer than
    /// `--api-max-user-window-hours`.
    top_users: Option<Vec<TopUser>>,
    top_rooms: Vec<TopRoom>,
    participation: Option<Participation>,
    #[serde(skip_serializing_if = "Option::is_none")]
    per_user_omitted: Option<String>,
}

#[derive(Serialize)]
struct MessageTypes {
    #[serde(rename = "TEXT")]
    text: i64,
    #[serde(rename = "JOIN")]
    join: i64,
    #[serde(rename = "LEAVE")]
    leave: i64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SeriesDoc {
    per_second: Option<Series>,
    per_minute: Option<Series>,
    per_hour: Option<Series>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct TopRoom {
    room_id: i32,
    messages: i64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Participation {
    messages_per_user: Vec<MessagesBucket>,
    rooms_per_user: Vec<RoomsBucket>,
}

#[derive(Serialize)]
struct MessagesBucket {
    min: i64,
    max: i64,
    users: i64,
}

#[derive(Serialize)]
struct RoomsBucket {
    rooms: i64,
    users: i64,
}

/// The analytics and what a caller may want of their parts.
struct Analytics {
    document: AnalyticsDoc,
    rooms: BTreeMap<i32, TypeCounts>,
    /// `None` when the window is too long for the per-user scan.
    users: Option<PerUser>,
}

/// The analytics of `window`, on `client` (a snapshot transaction).
fn analytics(
    context: &ApiContext,
    client: &mut impl GenericClient,
    window: Window,
    top: u32,
    timings: &mut Timings,
) -> Result<Analytics, ApiError> {
    let failed = |e: postgres::Error| context.query_error(&e);
    let rooms = timings
        .time("roomCounts", || room_counts(client, window))
        .map_err(failed)?;
    let seconds = window.seconds();
    let step = if seconds <= PER_SECOND_UP_TO {
        1
    } else if seconds <= PER_MINUTE_UP_TO {
        MINUTE
    } else {
        HOUR
    };
    let finest = timings
        .time("series", || series(client, window, step))
        .map_err(failed)?
        .expect("1, 60 and 3600 are series steps");
    let (per_second, per_minute, per_hour) = match step {
        1 => {
            let minutes = finest.coarsen(MINUTE);
            let hours = finest.coarsen(HOUR);
            (Some(finest), Some(minutes), Some(hours))
        }
        MINUTE => {
            let hours = finest.coarsen(HOUR);
            (None, Some(finest), Some(hours))
        }
        _ => (None, None, Some(finest)),
    };
    // The per-user scan is the one part that costs O(messages in the
    // window) (a day at 10M rows: ~1 s); past the limit it is left out,
    // and distinct users come from the bitmap rollups instead.
    let hours = seconds / 3600.0;
    let (users, per_user_omitted, active) = if seconds <= context.max_user_window.as_secs_f64() {
        let users = timings
            .time("perUser", || per_user(client, window, top))
            .map_err(failed)?;
        let active = users.users;
        (Some(users), None, active)
    } else {
        let active = timings
            .time("activeUsers", || active_users(client, window))
            .map_err(failed)?;
        let omitted = format!(
            "top users and participation are computed for windows of at most {} h (--api-max-user-window-hours): this one is {hours:.1} h",
            context.max_user_window.as_secs() / 3600
        );
        (None, Some(omitted), active as i64)
    };

    let mut types = TypeCounts::default();
    for counts in rooms.values() {
        types.text += counts.text;
        types.join += counts.join;
        types.leave += counts.leave;
    }
    let total = types.total();
    let mut top_rooms: Vec<TopRoom> = rooms
        .iter()
        .map(|(&room_id, counts)| TopRoom {
            room_id,
            messages: counts.total(),
        })
        .collect();
    top_rooms.sort_by(|a, b| b.messages.cmp(&a.messages).then(a.room_id.cmp(&b.room_id)));
    top_rooms.truncate(top as usize);
    let document = AnalyticsDoc {
        window: WindowDoc::of(window),
        total_messages: total,
        message_types: MessageTypes {
            text: types.text,
            join: types.join,
            leave: types.leave,
        },
        active_users: active,
        messages_per_second: total as f64 / seconds,
        series: SeriesDoc {
            per_second,
            per_minute,
            per_hour,
        },
        top_users: users.as_ref().map(|u| u.top.clone()),
        top_rooms,
        participation: users.as_ref().map(|users| Participation {
            messages_per_user: power_of_two_buckets(&users.messages_per_user)
                .into_iter()
                .map(|(min, max, users)| MessagesBucket { min, max, users })
                .collect(),
            rooms_per_user: users
                .rooms_per_user
                .iter()
                .map(|(&rooms, &users)| RoomsBucket { rooms, users })
                .collect(),
        }),
        per_user_omitted,
    };
    Ok(Analytics {
        document,
        rooms,
        users,
    })
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MetricsDoc {
    generated_at: String,
    window: WindowDoc,
    core_queries: CoreQueries,
    analytics: AnalyticsDoc,
    live: serde_json::Value,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CoreQueries {
    room_messages: ChosenPage,
    user_messages: ChosenPage,
    active_users: u64,
    user_rooms: UserRoomsDoc,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ChosenPage {
    #[serde(skip_serializing_if = "Option::is_none")]
    room_id: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<i32>,
    chosen_by: String,
    count: usize,
    messages: Vec<StoredMessage>,
}

/// `GET /api/metrics`: the core queries, the analytics and the live stats.
fn metrics(
    context: &ApiContext,
    params: &Params,
    timings: &mut Timings,
) -> Result<MetricsDoc, ApiError> {
    let window = aggregate_window(params, context.max_window)?;
    let rooms = i64::from(context.rooms.count());
    let room = params.number("roomId", 1..=rooms)?;
    let user = params.number(
        "userId",
        1..=i64::from(chatflow_protocol::message::USER_ID_MAX),
    )?;
    let limit = params
        .number("limit", 1..=MAX_LIMIT)?
        .unwrap_or(DEFAULT_LIMIT) as u32;
    let top = params.number("topN", 1..=MAX_TOP)?.unwrap_or(DEFAULT_TOP) as u32;
    let generated_at = rfc3339(SystemTime::now());

    let mut connection = checkout(context, timings)?;
    let mut tx = snapshot(context, &mut connection, timings)?;
    let Analytics {
        document: analytics,
        rooms: room_totals,
        users,
    } = analytics(context, &mut tx, window, top, timings)?;
    let (room, room_chosen_by) = match room {
        Some(room) => (room as i32, "requested".to_string()),
        None => busiest_room(&room_totals),
    };
    let (user, user_chosen_by) = match user {
        Some(user) => (user as i32, "requested".to_string()),
        None => match users.as_ref().map(|u| u.top.first()) {
            Some(Some(top)) => (top.user_id, "busiest user in the window".to_string()),
            Some(None) => (1, "no messages in the window: user 1".to_string()),
            None => (
                1,
                "user 1: the busiest user is not computed for a window this long".to_string(),
            ),
        },
    };
    let failed = |e: postgres::Error| context.query_error(&e);
    let latest = |subject| PageRequest {
        subject,
        start: Some(window.start_time()),
        end: Some(window.end_time()),
        order: Order::Desc,
        limit,
        after: None,
    };
    let room_page = timings
        .time("roomMessages", || {
            page(&mut tx, &latest(Subject::Room(room)))
        })
        .map_err(failed)?;
    let user_page = timings
        .time("userMessages", || {
            page(&mut tx, &latest(Subject::User(user)))
        })
        .map_err(failed)?;
    let active = timings
        .time("activeUsers", || active_users(&mut tx, window))
        .map_err(failed)?;
    let rooms_of_user = timings
        .time("userRooms", || user_rooms(&mut tx, user))
        .map_err(failed)?;
    drop(tx);
    drop(connection);
    let live = serde_json::json!({
        "servers": context.live.servers(timings),
        "consumers": context.live.consumers(timings),
        "queues": context.live.queues(timings),
        "presence": super::presence::live(context),
        "database": {
            "address": context.database,
            "pool": context.pool.stats(),
            "replica": context.replica.as_ref().map(|r| r.report()),
        },
    });
    Ok(MetricsDoc {
        generated_at,
        window: WindowDoc::of(window),
        core_queries: CoreQueries {
            room_messages: ChosenPage {
                room_id: Some(room),
                user_id: None,
                chosen_by: room_chosen_by,
                count: room_page.messages.len(),
                messages: room_page.messages,
            },
            user_messages: ChosenPage {
                room_id: None,
                user_id: Some(user),
                chosen_by: user_chosen_by,
                count: user_page.messages.len(),
                messages: user_page.messages,
            },
            active_users: active,
            user_rooms: UserRoomsDoc {
                user_id: user,
                rooms: rooms_of_user,
            },
        },
        analytics,
        live,
    })
}

/// The room with the most messages (the lowest id among equals), or room
/// 1 when the window is empty.
fn busiest_room(rooms: &BTreeMap<i32, TypeCounts>) -> (i32, String) {
    rooms
        .iter()
        .max_by(|a, b| a.1.total().cmp(&b.1.total()).then(b.0.cmp(a.0)))
        .map(|(&room, _)| (room, "busiest room in the window".to_string()))
        .unwrap_or((1, "no messages in the window: room 1".to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_busiest_room_is_the_lowest_id_among_equals() {
        let mut rooms = BTreeMap::new();
        let counts = |n| TypeCounts {
            text: n,
            join: 0,
            leave: 0,
        };
        rooms.insert(3, counts(5));
        rooms.insert(2, counts(5));
        rooms.insert(9, counts(1));
        assert_eq!(busiest_room(&rooms).0, 2);
        assert_eq!(busiest_room(&BTreeMap::new()).0, 1);
    }
}
