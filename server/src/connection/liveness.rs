//! Whether an open WebSocket's peer is still there. A peer silent for
//! `ping_interval` is sent a ping; one still silent `pong_timeout` after
//! the ping (no pong, nor any other frame) is closed and counted
//! (`pingTimeouts`). There is no timer per connection: the worker's sweep
//! (every 250 ms) calls [`Connection::keep_alive`], which takes the
//! socket's "heard from" mark ([`crate::socket::Socket::take_heard`]) and
//! compares the sweep's clock with when the current silence began
//! (`Connection::since`, in the `Live` stage). So a connection that talks
//! costs nothing but a flag per read, and is never pinged. (A peer whose
//! input is held back because it does not read our output is heard from
//! again once it reads; one that reads nothing for the ping interval plus
//! the pong timeout is closed the same way: it is not there either.)
//!
//! The close code is 1001 (going away), not 1011 (internal error): the
//! server did not fail, the peer (or the path to it) went away, and 1001
//! is what a client already treats as "reconnect" (a server restart sends
//! it too); a 1011 would send operators looking for a server bug. The
//! connection is removed at once, without waiting the grace period for a
//! close reply that a silent peer will not send.

use std::time::Instant;

use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Message;

use super::{Connection, Context, Next, Phase, Stage};
use crate::stats::WorkerStats;

impl Connection {
    /// The sweep's liveness check of a live WebSocket (anything else is
    /// left alone).
    pub(super) fn keep_alive(&mut self, now: Instant, cx: &Context) -> Next {
        let liveness = &cx.shared.config.liveness;
        let Some(interval) = liveness.ping_interval else {
            return Next::WAIT;
        };
        let Phase::Open {
            ws,
            stage: Stage::Live,
            ..
        } = &mut self.phase
        else {
            return Next::WAIT;
        };
        if ws.get_mut().take_heard() {
            // Alive: the silence (if any) starts again from this sweep.
            self.since = now;
            self.pinged = false;
            return Next::WAIT;
        }
        let silent = now.saturating_duration_since(self.since);
        if !self.pinged {
            if silent < interval {
                return Next::WAIT;
            }
            self.pinged = true;
            self.since = now;
            return self.send(Message::Ping(Default::default())).next();
        }
        if silent < liveness.pong_timeout {
            return Next::WAIT;
        }
        WorkerStats::bump(&cx.stats().ping_timeouts);
        self.start_close(
            CloseCode::Away,
            "ping timeout: nothing heard from the client",
        );
        // Best effort: a peer that does not answer pings may not read.
        let _ = self.flush(&cx.turn);
        Next::Remove
    }
}
