//! A connection's part in presence ([`crate::presence`] has the model):
//! the users its accepted `JOIN`s made present, whether it hears its
//! room's presence frames, and its requests waiting for an answer; and, on
//! the worker's side, delivering presence frames and answers.
//!
//! A connection hears the room's `presence_join`/`presence_leave` frames
//! once it is a member (an accepted `JOIN`) or has asked for the list: a
//! client that never did either — a plain sender, a load generator's
//! warm-up — gets no frame it did not ask for.

use std::sync::atomic::Ordering;

use chatflow_protocol::frame::error_json;
use chatflow_protocol::{ClientMessage, ErrorCode, ErrorFrame, MessageType, Request};
use slab::Slab;
use tungstenite::{Message, Utf8Bytes};

use super::websocket::Sent;
use super::{Connection, Context, Next, Phase, Stage};
use crate::presence::Event;
use crate::stats::WorkerStats;

/// Presence requests one connection may have waiting for their answers:
/// enough for a client paging through a list, few enough that a flood of
/// requests costs the presence thread nothing the client does not read.
const MAX_ASKING: u8 = 8;

/// What presence knows of one connection (boxed on the connection: most
/// never join or ask).
#[derive(Debug, Default)]
pub(super) struct Membership {
    /// Users its accepted `JOIN`s made present (and no `LEAVE` removed).
    users: Vec<u32>,
    /// It hears the room's presence frames.
    subscribed: bool,
    /// Requests sent to the presence thread and not yet answered.
    asking: u8,
}

/// What an accepted `JOIN` or `LEAVE` does to presence; kept with a
/// pending ack and applied when the broker confirms.
#[derive(Debug)]
pub(super) enum PresenceEffect {
    Join { user: u32, username: String },
    Leave { user: u32 },
}

impl PresenceEffect {
    /// The effect of `message`, if it has one and presence is on.
    pub(super) fn of(message: &ClientMessage<'_>, cx: &Context) -> Option<PresenceEffect> {
        cx.presence.as_ref()?;
        match message.message_type {
            MessageType::Text => None,
            MessageType::Join => Some(PresenceEffect::Join {
                user: message.user_id,
                username: message.username.to_string(),
            }),
            MessageType::Leave => Some(PresenceEffect::Leave {
                user: message.user_id,
            }),
        }
    }
}

impl Connection {
    /// Applies this connection's accepted `JOIN` or `LEAVE`.
    pub(super) fn apply_presence(&mut self, effect: PresenceEffect, cx: &mut Context) {
        let Phase::Open { room, .. } = self.phase else {
            return;
        };
        let Some(outbox) = cx.presence.as_mut() else {
            return;
        };
        let membership = self.membership.get_or_insert_with(Box::default);
        match effect {
            PresenceEffect::Join { user, username } => {
                membership.subscribed = true;
                if membership.users.contains(&user) {
                    return;
                }
                if membership.users.len() >= outbox.max_users_per_connection {
                    WorkerStats::bump(&cx.stats().presence_joins_over_limit);
                    return;
                }
                membership.users.push(user);
                outbox.push(Event::Join {
                    room,
                    user,
                    username,
                });
            }
            PresenceEffect::Leave { user } => {
                if let Some(at) = membership.users.iter().position(|&u| u == user) {
                    membership.users.swap_remove(at);
                    outbox.push(Event::Leave { room, user });
                }
            }
        }
    }

    /// A `{"type":"presence"}` request: asks the presence thread, whose
    /// answer comes back through the inbox ([`presence_answered`]); from
    /// now on the connection hears the room's presence frames.
    pub(super) fn on_request(
        &mut self,
        key: usize,
        room: u32,
        request: Request,
        cx: &mut Context,
    ) -> Next {
        let Request::Presence { after } = request;
        let Some(outbox) = cx.presence.as_mut() else {
            return self.refuse("presence is off on this server (--presence off)");
        };
        let membership = self.membership.get_or_insert_with(Box::default);
        if membership.asking >= MAX_ASKING {
            return self.refuse(
                "too many presence requests waiting for their answers (8): read them, then ask again",
            );
        }
        membership.asking += 1;
        membership.subscribed = true;
        outbox.push(Event::Ask {
            room,
            after,
            key,
            connection_id: self.id,
        });
        Next::WAIT
    }

    /// The connection is going: every user it held loses it (their grace
    /// starts if it was their last).
    pub(super) fn release_presence(&mut self, cx: &mut Context) {
        let Phase::Open { room, .. } = self.phase else {
            return;
        };
        let (Some(membership), Some(outbox)) = (self.membership.take(), cx.presence.as_mut())
        else {
            return;
        };
        for user in membership.users {
            outbox.push(Event::Disconnect { room, user });
        }
    }

    fn hears_presence(&self) -> bool {
        self.membership.as_ref().is_some_and(|m| m.subscribed)
    }

    /// An `UNAVAILABLE` error for a request that cannot be answered.
    fn refuse(&mut self, why: &'static str) -> Next {
        let frame = ErrorFrame::new(ErrorCode::Unavailable, why);
        self.send(Message::text(error_json(&frame))).next()
    }
}

/// Queues a presence frame to every live member of `room` on this worker
/// that hears them, handing each one's [`Next`] to `then` (which must not
/// remove anyone: the room index is borrowed meanwhile).
pub fn deliver_presence(
    conns: &mut Slab<Connection>,
    cx: &Context,
    room: u32,
    frame: &Utf8Bytes,
    mut then: impl FnMut(usize, &mut Connection, Next),
) {
    let mut sent = 0;
    for &key in cx.rooms.members(room) {
        let conn = &mut conns[key];
        let live = matches!(
            conn.phase,
            Phase::Open {
                stage: Stage::Live,
                ..
            }
        );
        if !live || !conn.hears_presence() {
            continue;
        }
        let result = conn.send(Message::Text(frame.clone()));
        if matches!(result, Sent::Queued) {
            sent += 1;
        }
        then(key, conn, result.next());
    }
    (cx.stats().presence_frames_sent).fetch_add(sent, Ordering::Relaxed);
}

/// The answer to a presence request: queued on its connection if that is
/// still there (slab keys are reused: the id says it is the same one).
pub fn presence_answered(
    conns: &mut Slab<Connection>,
    cx: &Context,
    key: usize,
    connection_id: u64,
    frame: Utf8Bytes,
) -> Option<(usize, Next)> {
    let conn = conns.get_mut(key).filter(|c| c.id == connection_id)?;
    if let Some(membership) = conn.membership.as_mut() {
        membership.asking = membership.asking.saturating_sub(1);
    }
    let sent = conn.send(Message::Text(frame));
    if matches!(sent, Sent::Queued) {
        WorkerStats::bump(&cx.stats().presence_frames_sent);
    }
    Some((key, sent.next()))
}
