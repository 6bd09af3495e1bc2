//! The presence model, apart from any thread or I/O (so its rules are unit
//! tested here): this server's members and their connections, the grace
//! of those whose last connection closed, the other servers' members,
//! each room's merged list across the fleet, and the frames that tell
//! members what changed.
//!
//! Invariants:
//! - a user is in a room's `merged` list iff this server holds them
//!   (`local`, connections or grace) or another server's latest record
//!   does;
//! - `announced` is what the room's members were last told; the
//!   `presence_join`/`presence_leave` frames are the difference between it
//!   and `merged`, at most once per `interval` per room ([`State::frames`]),
//!   for the rooms in `owing` (those whose users changed since);
//! - every change to `local` is queued for Redis in `mirror`, in order.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use chatflow_protocol::presence::{
    presence_join_json, presence_json, presence_leave_json, Member, MemberList, PresenceChange,
    PresenceUser, MAX_LISTED, MAX_PAGE,
};
use chatflow_protocol::ServerTime;
use tungstenite::Utf8Bytes;

use super::{Entry, MemberPage, RemoteUpdate};

/// A change to this server's members that Redis must hear: the user's
/// entry now, or `None` once they are gone.
pub type MirrorChange = (u32, u32, Option<Entry>);

/// A member as this server holds them.
#[derive(Clone, Debug)]
struct Local {
    connections: u32,
    since_ms: i64,
    username: String,
    /// Their last connection closed: they go at this instant unless a
    /// `JOIN` comes first.
    leaving: Option<Instant>,
}

impl Local {
    fn entry(&self) -> Entry {
        Entry {
            connections: self.connections,
            since_ms: self.since_ms,
            username: self.username.clone(),
        }
    }
}

/// A member as the fleet has them: the earliest `since`, every server's
/// connections, this server's username (or the first other's).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Merged {
    username: String,
    since_ms: i64,
    connections: u32,
}

#[derive(Default)]
struct Room {
    local: HashMap<u32, Local>,
    merged: BTreeMap<u32, Merged>,
    /// Who the members were last told is here (with the username told).
    announced: BTreeMap<u32, String>,
    /// No frame before this (the interval since the last ones).
    quiet_until: Option<Instant>,
    /// The first page of the member list, serialised once per change.
    first_page: Option<Utf8Bytes>,
}

/// Every room's presence (see the module docs).
pub struct State {
    /// Index = room (0 unused).
    rooms: Vec<Room>,
    grace: Duration,
    interval: Duration,
    /// Other servers' members: server → room → user.
    remote: HashMap<String, HashMap<u32, HashMap<u32, Entry>>>,
    /// (deadline, room, user) of members in their grace, oldest first
    /// (one grace for all, so deadlines come in order). An entry whose
    /// member came back is skipped when it comes up.
    leaving: VecDeque<(Instant, u32, u32)>,
    mirror: Vec<MirrorChange>,
    /// Rooms whose members changed since their last frames: what
    /// [`State::frames`] and [`State::next_deadline`] look at (never every
    /// room: there may be 10,000).
    owing: BTreeSet<u32>,
    /// Rooms whose counts may have changed since [`State::take_counts`].
    recount: BTreeSet<u32>,
}

impl State {
    pub fn new(rooms: u32, grace: Duration, interval: Duration) -> State {
        State {
            rooms: (0..=rooms).map(|_| Room::default()).collect(),
            grace,
            interval,
            remote: HashMap::new(),
            leaving: VecDeque::new(),
            mirror: Vec::new(),
            owing: BTreeSet::new(),
            recount: BTreeSet::new(),
        }
    }

    /// An accepted `JOIN` of `user` on one more of this server's
    /// connections (it ends their grace, if any).
    pub fn join(&mut self, room: u32, user: u32, username: String, now_ms: i64) {
        let Some(r) = self.rooms.get_mut(room as usize) else {
            return;
        };
        let local = r.local.entry(user).or_insert_with(|| Local {
            connections: 0,
            since_ms: now_ms,
            username: String::new(),
            leaving: None,
        });
        local.connections += 1;
        local.leaving = None;
        local.username = username;
        self.changed_locally(room, user);
    }

    /// An accepted `LEAVE` on a connection that held `user`: that
    /// connection no longer does; with no other, they are gone at once.
    pub fn leave(&mut self, room: u32, user: u32) {
        let Some(r) = self.rooms.get_mut(room as usize) else {
            return;
        };
        let Some(local) = r.local.get_mut(&user) else {
            return;
        };
        local.connections = local.connections.saturating_sub(1);
        if local.connections == 0 {
            r.local.remove(&user);
        }
        self.changed_locally(room, user);
    }

    /// A connection that held `user` closed: with no other, their grace
    /// starts (or, with none configured, they are gone at once).
    pub fn disconnect(&mut self, room: u32, user: u32, now: Instant) {
        let Some(r) = self.rooms.get_mut(room as usize) else {
            return;
        };
        let Some(local) = r.local.get_mut(&user) else {
            return;
        };
        local.connections = local.connections.saturating_sub(1);
        if local.connections == 0 {
            if self.grace.is_zero() {
                r.local.remove(&user);
            } else {
                let deadline = now + self.grace;
                local.leaving = Some(deadline);
                self.leaving.push_back((deadline, room, user));
            }
        }
        self.changed_locally(room, user);
    }

    /// Ends the grace of every member whose deadline has passed.
    pub fn expire(&mut self, now: Instant) {
        while let Some(&(deadline, room, user)) = self.leaving.front() {
            if deadline > now {
                break;
            }
            self.leaving.pop_front();
            let r = &mut self.rooms[room as usize];
            if r.local
                .get(&user)
                .is_some_and(|l| l.leaving == Some(deadline))
            {
                r.local.remove(&user);
                self.changed_locally(room, user);
            }
        }
    }

    /// Another server's presence changed (or it is gone).
    pub fn remote(&mut self, update: RemoteUpdate) {
        match update {
            RemoteUpdate::Rooms { server, rooms } => {
                let held = self.remote.entry(server).or_default();
                let mut touched = Vec::new();
                for (room, members) in rooms {
                    if room == 0 || room as usize >= self.rooms.len() {
                        continue; // a room this server does not have
                    }
                    let before = held.insert(room, members).unwrap_or_default();
                    let after = &held[&room];
                    let users = before.keys().chain(after.keys()).copied();
                    touched.extend(users.map(|user| (room, user)));
                }
                for (room, user) in touched {
                    self.refresh(room, user);
                }
            }
            RemoteUpdate::Gone { server } => {
                let Some(rooms) = self.remote.remove(&server) else {
                    return;
                };
                for (room, members) in rooms {
                    for user in members.into_keys() {
                        self.refresh(room, user);
                    }
                }
            }
        }
    }

    /// The next instant something is due: a grace ending, or a room's
    /// frames (`now` for a changed room that owes no interval).
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let grace = self.leaving.front().map(|&(at, _, _)| at);
        let frames = (self.owing.iter())
            .map(|&room| self.rooms[room as usize].quiet_until.unwrap_or(now))
            .min();
        match (grace, frames) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The `presence_join`/`presence_leave` frames due now, by room: for
    /// each room whose members changed and whose interval has passed, who
    /// arrived and who left since its last frames (someone who came and
    /// went in between is in neither).
    pub fn frames(&mut self, now: Instant) -> Vec<(u32, Utf8Bytes)> {
        let mut out = Vec::new();
        let due: Vec<u32> = (self.owing.iter().copied())
            .filter(|&room| {
                self.rooms[room as usize]
                    .quiet_until
                    .is_none_or(|t| now >= t)
            })
            .collect();
        for room in due {
            self.owing.remove(&room);
            let r = &mut self.rooms[room as usize];
            let (joined, left) = diff(&r.announced, &r.merged);
            if joined.is_empty() && left.is_empty() {
                continue;
            }
            let count = r.merged.len() as u64;
            for (users, json) in [
                (
                    joined,
                    presence_join_json as fn(&PresenceChange<'_>) -> String,
                ),
                (left, presence_leave_json),
            ] {
                if users.is_empty() {
                    continue;
                }
                let more = users.len().saturating_sub(MAX_LISTED) as u64;
                let change = PresenceChange {
                    room_id: room,
                    count,
                    users: users.into_iter().take(MAX_LISTED).collect(),
                    more,
                };
                out.push((room, Utf8Bytes::from(json(&change))));
            }
            r.announced = (r.merged.iter())
                .map(|(&user, m)| (user, m.username.clone()))
                .collect();
            r.quiet_until = Some(now + self.interval);
        }
        out
    }

    /// The `presence` frame for a request: a page of the member list after
    /// `after` (the first page is serialised once per change and shared).
    pub fn answer(&mut self, room: u32, after: Option<u32>) -> Utf8Bytes {
        let Some(r) = self.rooms.get_mut(room as usize) else {
            return Utf8Bytes::from(presence_json(&MemberList {
                room_id: room,
                count: 0,
                after,
                members: Vec::new(),
                next_after: None,
            }));
        };
        if after.is_none() {
            if let Some(page) = &r.first_page {
                return page.clone();
            }
        }
        let (members, next_after) = page_of(&r.merged, after, MAX_PAGE);
        let frame = Utf8Bytes::from(presence_json(&MemberList {
            room_id: room,
            count: r.merged.len() as u64,
            after,
            members,
            next_after,
        }));
        if after.is_none() {
            r.first_page = Some(frame.clone());
        }
        frame
    }

    /// Up to `limit` members of `room` after `after`, for the read API.
    pub fn page(&self, room: u32, after: Option<u32>, limit: usize) -> MemberPage {
        let (count, (members, next_after)) = match self.rooms.get(room as usize) {
            Some(r) => (r.merged.len() as u64, page_of(&r.merged, after, limit)),
            None => (0, (Vec::new(), None)),
        };
        MemberPage {
            room_id: room,
            count,
            members: members.into_iter().map(owned).collect(),
            next_after,
        }
    }

    /// (room, members across the fleet, members this server holds) of
    /// every room whose counts may have changed since the last call.
    pub fn take_counts(&mut self) -> Vec<(u32, u64, u64)> {
        let rooms = std::mem::take(&mut self.recount);
        (rooms.into_iter())
            .map(|room| {
                let r = &self.rooms[room as usize];
                (room, r.merged.len() as u64, r.local.len() as u64)
            })
            .collect()
    }

    /// The other servers whose presence is held.
    pub fn servers(&self) -> usize {
        self.remote.len()
    }

    /// The changes to this server's members since the last call, in order.
    pub fn take_mirror(&mut self) -> Vec<MirrorChange> {
        std::mem::take(&mut self.mirror)
    }

    /// `user`'s local entry changed: Redis must hear it, and the merged
    /// list follows.
    fn changed_locally(&mut self, room: u32, user: u32) {
        let entry = self.rooms[room as usize].local.get(&user).map(Local::entry);
        self.mirror.push((room, user, entry));
        self.recount.insert(room);
        self.refresh(room, user);
    }

    /// Recomputes `user`'s merged entry in `room` from this server's and
    /// every other server's records.
    fn refresh(&mut self, room: u32, user: u32) {
        let r = &mut self.rooms[room as usize];
        let mut merged = r.local.get(&user).map(|l| Merged {
            username: l.username.clone(),
            since_ms: l.since_ms,
            connections: l.connections,
        });
        for rooms in self.remote.values() {
            let Some(e) = rooms.get(&room).and_then(|m| m.get(&user)) else {
                continue;
            };
            match &mut merged {
                Some(m) => {
                    m.since_ms = m.since_ms.min(e.since_ms);
                    m.connections = m.connections.saturating_add(e.connections);
                }
                None => {
                    merged = Some(Merged {
                        username: e.username.clone(),
                        since_ms: e.since_ms,
                        connections: e.connections,
                    })
                }
            }
        }
        let before = match merged {
            Some(m) => r.merged.insert(user, m),
            None => r.merged.remove(&user),
        };
        let after = r.merged.get(&user);
        if before.as_ref() != after {
            r.first_page = None;
        }
        if before.is_some() != after.is_some() {
            self.owing.insert(room);
            self.recount.insert(room);
        }
    }
}

/// Who is in `now` and not in `told` (arrived), and the reverse (left),
/// each in user order.
fn diff<'a>(
    told: &'a BTreeMap<u32, String>,
    now: &'a BTreeMap<u32, Merged>,
) -> (Vec<PresenceUser<'a>>, Vec<PresenceUser<'a>>) {
    let joined = (now.iter())
        .filter(|(user, _)| !told.contains_key(user))
        .map(|(&user_id, m)| PresenceUser {
            user_id,
            username: m.username.as_str().into(),
        })
        .collect();
    let left = (told.iter())
        .filter(|(user, _)| !now.contains_key(user))
        .map(|(&user_id, name)| PresenceUser {
            user_id,
            username: name.as_str().into(),
        })
        .collect();
    (joined, left)
}

/// Up to `limit` members after `after`, and where the next page starts.
fn page_of(
    merged: &BTreeMap<u32, Merged>,
    after: Option<u32>,
    limit: usize,
) -> (Vec<Member<'_>>, Option<u32>) {
    let start = after.map_or(0, |a| a.saturating_add(1));
    let mut members: Vec<Member<'_>> = (merged.range(start..))
        .take(limit + 1)
        .map(|(&user_id, m)| Member {
            user_id,
            username: m.username.as_str().into(),
            since: ServerTime(m.since_ms),
            connections: m.connections,
        })
        .collect();
    let next = if members.len() > limit {
        members.truncate(limit);
        members.last().map(|m| m.user_id)
    } else {
        None
    };
    (members, next)
}

fn owned(member: Member<'_>) -> Member<'static> {
    Member {
        username: member.username.into_owned().into(),
        ..member
    }
}

#[cfg(test)]
mod tests {
    use chatflow_protocol::presence::PresenceFrame;

    use super::*;

    const GRACE: Duration = Duration::from_secs(5);
    const INTERVAL: Duration = Duration::from_millis(500);

    fn state() -> State {
        State::new(3, GRACE, INTERVAL)
    }

    fn name(user: u32) -> String {
        format!("user{user}")
    }

    /// The member list's user ids and connection counts.
    fn members(state: &mut State, room: u32) -> Vec<(u32, u32)> {
        let page = state.page(room, None, 1000);
        assert_eq!(page.count as usize, page.members.len());
        page.members
            .iter()
            .map(|m| (m.user_id, m.connections))
            .collect()
    }

    /// The frames due at `now`: (type, room, users listed, more, count).
    fn frames(state: &mut State, now: Instant) -> Vec<(&'static str, u32, Vec<u32>, u64, u64)> {
        state
            .frames(now)
            .into_iter()
            .map(|(room, text)| match PresenceFrame::parse(&text).unwrap() {
                PresenceFrame::PresenceJoin(c) => ("join", room, ids(&c), c.more, c.count),
                PresenceFrame::PresenceLeave(c) => ("leave", room, ids(&c), c.more, c.count),
                PresenceFrame::Presence(_) => panic!("not a change: {text}"),
            })
            .collect()
    }

    fn ids(change: &PresenceChange<'_>) -> Vec<u32> {
        change.users.iter().map(|u| u.user_id).collect()
    }

    fn entry(connections: u32, since_ms: i64, user: u32) -> Entry {
        Entry {
            connections,
            since_ms,
            username: name(user),
        }
    }

    #[test]
    fn two_connections_of_one_user_leave_only_when_both_are_gone() {
        let mut s = state();
        let t = Instant::now();
        s.join(1, 7, name(7), 100);
        s.join(1, 7, name(7), 200);
        assert_eq!(members(&mut s, 1), [(7, 2)]);
        s.disconnect(1, 7, t);
        assert_eq!(members(&mut s, 1), [(7, 1)], "one connection holds them");
        s.expire(t + GRACE * 2);
        assert_eq!(members(&mut s, 1), [(7, 1)], "no grace runs for them");
        s.leave(1, 7);
        assert!(members(&mut s, 1).is_empty(), "LEAVE on the last: at once");
        // Their since is the first JOIN's.
        s.join(2, 8, name(8), 100);
        s.join(2, 8, name(8), 300);
        assert_eq!(s.page(2, None, 10).members[0].since, ServerTime(100));
    }

    #[test]
    fn the_last_connection_closing_starts_the_grace_and_a_join_ends_it() {
        let mut s = state();
        let t = Instant::now();
        s.join(1, 7, name(7), 0);
        s.disconnect(1, 7, t);
        assert_eq!(members(&mut s, 1), [(7, 0)], "listed, no connection");
        assert_eq!(s.next_deadline(t), Some(t), "its frame is due");
        assert_eq!(frames(&mut s, t).len(), 1);
        assert_eq!(s.next_deadline(t), Some(t + GRACE));
        s.expire(t + GRACE - Duration::from_millis(1));
        assert_eq!(members(&mut s, 1), [(7, 0)]);
        // A reconnect within the grace keeps them, and its old deadline
        // is ignored when it comes up.
        s.join(1, 7, name(7), 50);
        s.expire(t + GRACE);
        assert_eq!(members(&mut s, 1), [(7, 1)]);
        s.disconnect(1, 7, t + GRACE);
        s.expire(t + GRACE * 2 - Duration::from_millis(1));
        assert_eq!(members(&mut s, 1), [(7, 0)]);
        s.expire(t + GRACE * 2);
        assert!(members(&mut s, 1).is_empty(), "gone when the grace ends");
        // With no grace, gone at once.
        let mut s = State::new(1, Duration::ZERO, INTERVAL);
        s.join(1, 7, name(7), 0);
        s.disconnect(1, 7, t);
        assert!(members(&mut s, 1).is_empty());
    }

    #[test]
    fn every_local_change_is_mirrored_in_order() {
        let mut s = state();
        let t = Instant::now();
        s.join(1, 7, name(7), 10);
        s.join(1, 7, name(7), 20);
        s.disconnect(1, 7, t);
        s.leave(1, 7);
        assert_eq!(
            s.take_mirror(),
            vec![
                (1, 7, Some(entry(1, 10, 7))),
                (1, 7, Some(entry(2, 10, 7))),
                (1, 7, Some(entry(1, 10, 7))),
                (1, 7, None),
            ]
        );
        assert!(s.take_mirror().is_empty());
        // Unknown users and rooms change nothing.
        s.leave(1, 99);
        s.disconnect(2, 99, t);
        s.join(99, 1, name(1), 0);
        assert!(s.take_mirror().is_empty());
    }

    #[test]
    fn other_servers_members_merge_into_one_list_until_they_are_gone() {
        let mut s = state();
        s.join(1, 7, name(7), 500);
        s.remote(RemoteUpdate::Rooms {
            server: "b".into(),
            rooms: vec![(
                1,
                HashMap::from([(7, entry(2, 100, 7)), (8, entry(1, 300, 8))]),
            )],
        });
        s.remote(RemoteUpdate::Rooms {
            server: "c".into(),
            rooms: vec![
                (1, HashMap::from([(9, entry(1, 0, 9))])),
                (99, HashMap::from([(9, entry(1, 0, 9))])),
            ],
        });
        assert_eq!(members(&mut s, 1), [(7, 3), (8, 1), (9, 1)]);
        assert_eq!(s.page(1, None, 10).members[0].since, ServerTime(100));
        assert_eq!(s.servers(), 2);
        // A new record of a room replaces the old one.
        s.remote(RemoteUpdate::Rooms {
            server: "b".into(),
            rooms: vec![(1, HashMap::from([(8, entry(1, 300, 8))]))],
        });
        assert_eq!(members(&mut s, 1), [(7, 1), (8, 1), (9, 1)]);
        s.remote(RemoteUpdate::Gone { server: "b".into() });
        assert_eq!(members(&mut s, 1), [(7, 1), (9, 1)]);
        s.remote(RemoteUpdate::Gone { server: "c".into() });
        assert_eq!(members(&mut s, 1), [(7, 1)]);
        assert_eq!(s.servers(), 0);
        assert_eq!(s.take_counts(), [(1, 1, 1)]);
        assert!(s.take_counts().is_empty(), "nothing changed since");
    }

    #[test]
    fn frames_batch_a_rooms_changes_once_per_interval() {
        let mut s = state();
        let t = Instant::now();
        // The first change after a quiet spell goes out at once.
        s.join(1, 1, name(1), 0);
        assert_eq!(frames(&mut s, t), [("join", 1, vec![1], 0, 1)]);
        // Then the room waits out its interval; changes pile up.
        s.join(1, 2, name(2), 0);
        s.join(1, 3, name(3), 0);
        s.leave(1, 1);
        // Came and went in between: in no frame.
        s.join(1, 4, name(4), 0);
        s.leave(1, 4);
        s.join(2, 5, name(5), 0);
        assert_eq!(
            frames(&mut s, t),
            [("join", 2, vec![5], 0, 1)],
            "room 2 was quiet"
        );
        assert_eq!(s.next_deadline(t), Some(t + INTERVAL));
        assert!(frames(&mut s, t + INTERVAL - Duration::from_millis(1)).is_empty());
        assert_eq!(
            frames(&mut s, t + INTERVAL),
            [("join", 1, vec![2, 3], 0, 2), ("leave", 1, vec![1], 0, 2)]
        );
        // A change of connections only is no arrival or departure.
        s.join(1, 2, name(2), 0);
        assert!(frames(&mut s, t + INTERVAL * 3).is_empty());
        assert_eq!(s.next_deadline(t), None, "nothing waits");
    }

    #[test]
    fn a_storm_is_one_frame_per_interval_listing_a_hundred_and_counting_the_rest() {
        let mut s = state();
        let t = Instant::now();
        s.join(1, 100_000, name(1), 0);
        assert_eq!(frames(&mut s, t).len(), 1);
        for user in 1..=2_000 {
            s.join(1, user, name(user), 0);
        }
        let due = frames(&mut s, t + INTERVAL);
        assert_eq!(due.len(), 1);
        let (kind, _, listed, more, count) = &due[0];
        assert_eq!(
            (*kind, listed.len(), *more, *count),
            ("join", 100, 1_900, 2_001)
        );
        assert_eq!(listed[..3], [1, 2, 3], "in user order");
    }

    #[test]
    fn answers_page_the_merged_list_and_share_the_first_page() {
        let mut s = state();
        for user in 1..=(MAX_PAGE as u32 + 10) {
            s.join(1, user, name(user), 0);
        }
        let first = s.answer(1, None);
        let Some(PresenceFrame::Presence(list)) = PresenceFrame::parse(&first) else {
            panic!("{first}");
        };
        assert_eq!((list.count, list.members.len()), (266, MAX_PAGE));
        assert_eq!(list.next_after, Some(MAX_PAGE as u32));
        // Unchanged: the same bytes, shared.
        assert_eq!(s.answer(1, None).as_str().as_ptr(), first.as_str().as_ptr());
        let next = s.answer(1, list.next_after);
        let Some(PresenceFrame::Presence(rest)) = PresenceFrame::parse(&next) else {
            panic!("{next}");
        };
        assert_eq!(rest.members.len(), 10);
        assert_eq!(rest.members[0].user_id, MAX_PAGE as u32 + 1);
        assert_eq!((rest.after, rest.next_after), (list.next_after, None));
        // A change makes a new first page.
        s.leave(1, 1);
        let changed = s.answer(1, None);
        assert!(changed.as_str().contains("\"count\":265"), "{changed}");
        // The API's pages: the same order, any size.
        let page = s.page(1, Some(260), 3);
        let ids: Vec<u32> = page.members.iter().map(|m| m.user_id).collect();
        assert_eq!((ids, page.next_after), (vec![261, 262, 263], Some(263)));
        assert!(s.page(1, Some(100_000), 3).members.is_empty());
        assert_eq!(s.page(99, None, 3).count, 0);
    }
}
