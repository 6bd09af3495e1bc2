//! Presence frames: who is in a room, and who arrived or left.
//!
//! - `presence`: the answer to a client's `{"type":"presence"}` request
//!   ([`crate::message::Request::Presence`]): the room's members in
//!   `userId` order, a page at a time ([`MAX_PAGE`] members: a frame stays
//!   far below what any client reads in one message), with `count`, the
//!   members across the whole fleet, and `nextAfter` when another page
//!   follows (ask again with `"after": nextAfter`).
//! - `presence_join` / `presence_leave`: who became present or absent
//!   since the room's last such frame. A server sends each room's
//!   members at most one of each per interval (batched, so a connection
//!   storm is a few frames, not one per arrival), listing at most
//!   [`MAX_LISTED`] users and counting the rest in `more` (ask for the
//!   list to see them all).
//!
//! The same types serialise (server) and deserialise (clients, tests):
//! [`PresenceFrame::parse`] reads any of the three.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::frame::tagged_json;
use crate::time::ServerTime;

/// Members in one `presence` answer. At ~90 bytes a member, 256 are
/// ~23 KB: well under the 64 KiB a client reads in one message.
pub const MAX_PAGE: usize = 256;

/// Users listed in one `presence_join` / `presence_leave` frame (~40
/// bytes each: ~4 KB); the rest are counted in `more`.
pub const MAX_LISTED: usize = 100;

/// One member of a room, as the member list shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Member<'a> {
    pub user_id: u32,
    /// The username of their latest `JOIN`.
    #[serde(borrow)]
    pub username: Cow<'a, str>,
    /// When they became present (the earliest of their servers).
    pub since: ServerTime,
    /// Their open connections to the room, over every server; 0 while
    /// their last connection is gone and the grace before removal runs.
    pub connections: u32,
}

/// The `presence` frame: a page of a room's members.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberList<'a> {
    pub room_id: u32,
    /// Members of the room across the fleet (all pages).
    pub count: u64,
    /// The request's `after` (members listed have greater user ids).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<u32>,
    #[serde(borrow)]
    pub members: Vec<Member<'a>>,
    /// More members follow: ask again with `"after": next_after`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<u32>,
}

/// A user who arrived or left.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PresenceUser<'a> {
    pub user_id: u32,
    #[serde(borrow)]
    pub username: Cow<'a, str>,
}

/// The `presence_join` / `presence_leave` frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PresenceChange<'a> {
    pub room_id: u32,
    /// Members of the room after the change.
    pub count: u64,
    /// Who arrived (or left), in `userId` order; at most [`MAX_LISTED`].
    #[serde(borrow)]
    pub users: Vec<PresenceUser<'a>>,
    /// Who else arrived (or left) and is not listed.
    pub more: u64,
}

/// Any presence frame, as a client reads it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PresenceFrame<'a> {
    #[serde(borrow)]
    Presence(MemberList<'a>),
    #[serde(borrow)]
    PresenceJoin(PresenceChange<'a>),
    #[serde(borrow)]
    PresenceLeave(PresenceChange<'a>),
}

impl<'a> PresenceFrame<'a> {
    /// Decodes a presence frame; `None` for any other text.
    pub fn parse(text: &'a str) -> Option<PresenceFrame<'a>> {
        serde_json::from_str(text).ok()
    }
}

pub fn presence_json(list: &MemberList<'_>) -> String {
    tagged_json("presence", list)
}

pub fn presence_join_json(change: &PresenceChange<'_>) -> String {
    tagged_json("presence_join", change)
}

pub fn presence_leave_json(change: &PresenceChange<'_>) -> String {
    tagged_json("presence_leave", change)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(user_id: u32) -> Member<'static> {
        Member {
            user_id,
            username: format!("user{user_id}").into(),
            since: ServerTime(1_795_744_800_123),
            connections: 2,
        }
    }

    #[test]
    fn the_member_list_has_the_documented_fields_and_round_trips() {
        let list = MemberList {
            room_id: 7,
            count: 300,
            after: Some(10),
            members: vec![member(11), member(12)],
            next_after: Some(12),
        };
        let text = presence_json(&list);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["type"], "presence");
        assert_eq!(v["roomId"], 7);
        assert_eq!(v["count"], 300);
        assert_eq!(v["after"], 10);
        assert_eq!(v["nextAfter"], 12);
        let first = &v["members"][0];
        assert_eq!(first["userId"], 11);
        assert_eq!(first["username"], "user11");
        assert_eq!(first["since"], "2026-11-27T02:00:00.123Z");
        assert_eq!(first["connections"], 2);
        assert_eq!(
            PresenceFrame::parse(&text),
            Some(PresenceFrame::Presence(list))
        );
        // A last (or only) page says nothing of a next one.
        let last = MemberList {
            room_id: 1,
            count: 0,
            after: None,
            members: vec![],
            next_after: None,
        };
        let text = presence_json(&last);
        assert_eq!(
            text,
            r#"{"type":"presence","roomId":1,"count":0,"members":[]}"#
        );
    }

    #[test]
    fn join_and_leave_frames_list_users_and_count_the_rest() {
        let change = PresenceChange {
            room_id: 3,
            count: 120,
            users: vec![PresenceUser {
                user_id: 5,
                username: "user5".into(),
            }],
            more: 119,
        };
        let join = presence_join_json(&change);
        assert_eq!(
            join,
            r#"{"type":"presence_join","roomId":3,"count":120,"users":[{"userId":5,"username":"user5"}],"more":119}"#
        );
        assert_eq!(
            PresenceFrame::parse(&join),
            Some(PresenceFrame::PresenceJoin(change.clone()))
        );
        let leave = presence_leave_json(&change);
        assert_eq!(
            PresenceFrame::parse(&leave),
            Some(PresenceFrame::PresenceLeave(change))
        );
        assert_eq!(PresenceFrame::parse(r#"{"type":"ack"}"#), None);
        assert_eq!(PresenceFrame::parse("not json"), None);
    }

    #[test]
    fn a_full_page_stays_far_below_a_clients_message_limit() {
        let list = MemberList {
            room_id: 20,
            count: 100_000,
            after: Some(99_000),
            members: (0..MAX_PAGE as u32)
                .map(|i| Member {
                    username: "u".repeat(20).into(),
                    connections: u32::MAX,
                    ..member(99_001 + i)
                })
                .collect(),
            next_after: Some(99_256),
        };
        assert!(presence_json(&list).len() < 40 * 1024);
        let change = PresenceChange {
            room_id: 20,
            count: 100_000,
            users: (0..MAX_LISTED as u32)
                .map(|i| PresenceUser {
                    user_id: 99_001 + i,
                    username: "u".repeat(20).into(),
                })
                .collect(),
            more: 99_900,
        };
        assert!(presence_join_json(&change).len() < 8 * 1024);
    }
}
