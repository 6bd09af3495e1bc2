//! Request targets → the endpoint they name, with the ids in their path
//! checked: a room outside `1..=ROOMS` or a user outside `1..=100000` is a
//! 400 naming `roomId` / `userId`; an unknown path a 404. The dashboard's
//! two paths, which read no database, are routed apart
//! ([`dashboard_route`]).

use chatflow_protocol::message::USER_ID_MAX;
use chatflow_protocol::Rooms;

use super::reply::ApiError;

/// The endpoints of server/API.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    RoomMessages(i32),
    UserMessages(i32),
    UserRooms(i32),
    ActiveUsers,
    Analytics,
    Metrics,
    /// A room's member list (no database).
    RoomPresence(i32),
    /// Members per room (no database).
    Presence,
}

impl Route {
    /// A fixed name per endpoint (for counting requests by route).
    pub fn name(self) -> &'static str {
        match self {
            Route::RoomMessages(_) => "room_messages",
            Route::UserMessages(_) => "user_messages",
            Route::UserRooms(_) => "user_rooms",
            Route::ActiveUsers => "active_users",
            Route::Analytics => "analytics",
            Route::Metrics => "api_metrics",
            Route::RoomPresence(_) => "room_presence",
            Route::Presence => "presence",
        }
    }
}

/// The live dashboard's paths (`super::dashboard`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DashboardRoute {
    /// `GET /`: the page.
    Page,
    /// `GET /api/live`: the fleet's live stats it polls.
    Live,
}

/// The dashboard route of `path`, if it is one.
pub fn dashboard_route(path: &str) -> Option<DashboardRoute> {
    match path {
        "/" => Some(DashboardRoute::Page),
        "/api/live" => Some(DashboardRoute::Live),
        _ => None,
    }
}

/// Splits a request target into its path and query (without the `?`).
pub fn split_target(target: &str) -> (&str, &str) {
    target.split_once('?').unwrap_or((target, ""))
}

/// The route of `path`, or why there is none.
pub fn route(path: &str, rooms: Rooms) -> Result<Route, ApiError> {
    let segments: Vec<&str> = path.split('/').collect();
    match segments.as_slice() {
        ["", "api", "rooms", room, "messages"] => Ok(Route::RoomMessages(room_id(room, rooms)?)),
        ["", "api", "users", user, "messages"] => Ok(Route::UserMessages(user_id(user)?)),
        ["", "api", "users", user, "rooms"] => Ok(Route::UserRooms(user_id(user)?)),
        ["", "api", "active-users"] => Ok(Route::ActiveUsers),
        ["", "api", "analytics"] => Ok(Route::Analytics),
        ["", "api", "metrics"] => Ok(Route::Metrics),
        ["", "api", "rooms", room, "presence"] => Ok(Route::RoomPresence(room_id(room, rooms)?)),
        ["", "api", "presence"] => Ok(Route::Presence),
        _ => Err(ApiError::not_found(path)),
    }
}

/// A decimal id in `1..=max` (no sign, no leading `+`, at most 10 digits).
fn id(text: &str, max: u32, name: &str, what: &str) -> Result<i32, ApiError> {
    let parsed = (!text.is_empty() && text.len() <= 10 && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse::<u64>().ok())
        .flatten();
    match parsed {
        Some(n) if (1..=u64::from(max)).contains(&n) => Ok(n as i32),
        Some(n) => Err(ApiError::bad_request(
            Some(name),
            format!("{name} {n} is not a known {what}: {what}s are 1..={max}"),
        )),
        None => {
            let shown: String = text.chars().take(32).collect();
            Err(ApiError::bad_request(
                Some(name),
                format!("{name} is not a number: {shown:?}"),
            ))
        }
    }
}

fn room_id(text: &str, rooms: Rooms) -> Result<i32, ApiError> {
    id(text, rooms.count(), "roomId", "room")
}

fn user_id(text: &str) -> Result<i32, ApiError> {
    id(text, USER_ID_MAX, "userId", "user")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_their_refusals() {
        let rooms = Rooms::new(20).unwrap();
        assert_eq!(
            route("/api/rooms/7/messages", rooms),
            Ok(Route::RoomMessages(7))
        );
        assert_eq!(
            route("/api/users/100000/rooms", rooms),
            Ok(Route::UserRooms(100_000))
        );
        assert_eq!(route("/api/metrics", rooms), Ok(Route::Metrics));
        assert_eq!(
            route("/api/rooms/20/presence", rooms),
            Ok(Route::RoomPresence(20))
        );
        assert_eq!(route("/api/presence", rooms), Ok(Route::Presence));
        for (path, parameter) in [
            ("/api/rooms/21/messages", "roomId"),
            ("/api/rooms/21/presence", "roomId"),
            ("/api/rooms/x/presence", "roomId"),
            ("/api/rooms/0/messages", "roomId"),
            ("/api/rooms/-1/messages", "roomId"),
            ("/api/rooms/+7/messages", "roomId"),
            ("/api/rooms/99999999999999999999/messages", "roomId"),
            ("/api/users/100001/messages", "userId"),
            ("/api/users/abc/rooms", "userId"),
            ("/api/users//rooms", "userId"),
        ] {
            let e = route(path, rooms).unwrap_err();
            assert_eq!(
                (e.status, e.parameter.as_deref()),
                (400, Some(parameter)),
                "{path}"
            );
        }
        for path in [
            "/",
            "/api",
            "/api/metrics/",
            "/api/rooms/7",
            "/api/rooms/7/messages/x",
            "/api/presence/7",
            "/api/rooms/7/presence/",
            "/metrics",
        ] {
            assert_eq!(route(path, rooms).unwrap_err().status, 404, "{path}");
        }
        assert_eq!(dashboard_route("/"), Some(DashboardRoute::Page));
        assert_eq!(dashboard_route("/api/live"), Some(DashboardRoute::Live));
        for path in ["", "/index.html", "/api/live/", "/api/metrics"] {
            assert_eq!(dashboard_route(path), None, "{path}");
        }
        assert_eq!(
            split_target("/api/metrics?a=1?b"),
            ("/api/metrics", "a=1?b")
        );
    }
}
