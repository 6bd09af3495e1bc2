//! The `presence` thread: it owns the [`State`], takes every [`Input`] in
//! the order it was sent (so a connection's request is answered after its
//! own `JOIN`), and after each batch of inputs ends the graces that are
//! due, sends the rooms' due frames to the workers, hands this server's
//! changes to the sync thread, and stores the counts. It never touches
//! Redis (the sync thread does), so a Redis outage never delays an answer.
//!
//! [`Presence`] starts it (and, `shared`, the sync thread) once the
//! workers' inboxes exist, and stops both after the workers: the workers'
//! last disconnects are then in.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chatflow_protocol::time::now_ms;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::counts::Counts;
use super::state::State;
use super::sync::{RedisSync, SyncSettings};
use super::{Event, Input, Outbox, PresenceHandle};
use crate::config::{Config, PresenceMode};
use crate::fanout::{Fanout, WorkerEvent};

/// Inputs taken per batch before the thread looks at its clock: a steady
/// stream of them must not hold back the graces and frames due.
const BATCH: usize = 1024;
/// With nothing due, the thread still wakes this often (it costs nothing
/// and keeps the counts fresh after the clock moves).
const IDLE: Duration = Duration::from_secs(1);

/// Presence's channel, made before the workers (each gets an [`Outbox`]
/// on it) and started once their inboxes exist ([`Presence::start`]).
pub struct Pending {
    input: Sender<Input>,
    receiver: Receiver<Input>,
    mode: PresenceMode,
    max_users: usize,
}

impl Pending {
    /// `None` with `--presence off`.
    pub fn new(config: &Config) -> Option<Pending> {
        let mode = config.presence.mode_for(config.broker);
        if mode == PresenceMode::Off {
            return None;
        }
        let (input, receiver) = crossbeam_channel::unbounded();
        Some(Pending {
            input,
            receiver,
            mode,
            max_users: config.presence.max_users_per_connection,
        })
    }

    /// Worker `index`'s outbox.
    pub fn outbox(&self, index: usize) -> Outbox {
        Outbox::new(index, self.input.clone(), self.max_users)
    }
}

/// The running presence threads.
pub struct Presence {
    input: Sender<Input>,
    counts: Arc<Counts>,
    threads: Vec<JoinHandle<()>>,
}

impl Presence {
    /// Starts the presence thread (and with `shared`, the sync thread,
    /// which connects on its own: a Redis that is down delays sharing,
    /// never the start).
    pub fn start(pending: Pending, config: &Config, fanout: Fanout) -> anyhow::Result<Presence> {
        let rooms = config.rooms().count();
        let counts = Arc::new(Counts::new(pending.mode, rooms));
        let mut threads = Vec::new();
        let mirror = match pending.mode {
            PresenceMode::Shared => {
                let settings = SyncSettings::new(config);
                let (sync, thread) =
                    RedisSync::start(settings, pending.input.clone(), counts.clone())
                        .context("starting the presence-redis thread")?;
                threads.push(thread);
                Some(sync)
            }
            _ => None,
        };
        let state = State::new(rooms, config.presence.grace, config.presence.frame_interval);
        let thread = {
            let counts = counts.clone();
            let receiver = pending.receiver;
            std::thread::Builder::new()
                .name("presence".to_string())
                .spawn(move || run(state, &receiver, &fanout, mirror.as_ref(), &counts))
                .context("starting the presence thread")?
        };
        threads.push(thread);
        Ok(Presence {
            input: pending.input,
            counts,
            threads,
        })
    }

    /// What the read API and `/metrics` read.
    pub fn handle(&self) -> PresenceHandle {
        PresenceHandle {
            input: self.input.clone(),
            counts: self.counts.clone(),
        }
    }

    /// Stops the presence thread and then the sync thread (at most a Redis
    /// timeout later). This server's presence in Redis expires by itself
    /// (see [`crate::presence`]).
    pub fn shutdown(self) {
        let _ = self.input.send(Input::Stop);
        for thread in self.threads.into_iter().rev() {
            let _ = thread.join();
        }
    }
}

/// The presence thread (see the module docs).
fn run(
    mut state: State,
    receiver: &Receiver<Input>,
    fanout: &Fanout,
    mirror: Option<&RedisSync>,
    counts: &Counts,
) {
    loop {
        let now = Instant::now();
        let wait = (state.next_deadline(now))
            .map_or(IDLE, |at| at.saturating_duration_since(now))
            .min(IDLE);
        let mut stop = false;
        match receiver.recv_timeout(wait) {
            Ok(input) => {
                stop = handle(&mut state, input, fanout);
                for input in receiver.try_iter().take(BATCH) {
                    if stop {
                        break;
                    }
                    stop = handle(&mut state, input, fanout);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => stop = true,
        }
        let now = Instant::now();
        state.expire(now);
        for (room, frame) in state.frames(now) {
            fanout.presence(room, frame);
        }
        if let Some(mirror) = mirror {
            mirror.send(state.take_mirror());
        }
        for (room, fleet, local) in state.take_counts() {
            counts.set_room(room, fleet, local);
        }
        counts.set_servers(state.servers() as u64);
        if stop {
            return;
        }
    }
}

/// Applies one input; true for [`Input::Stop`].
fn handle(state: &mut State, input: Input, fanout: &Fanout) -> bool {
    match input {
        Input::Worker { worker, events } => {
            let now = Instant::now();
            let now_ms = now_ms();
            for event in events {
                match event {
                    Event::Join {
                        room,
                        user,
                        username,
                    } => state.join(room, user, username, now_ms),
                    Event::Leave { room, user } => state.leave(room, user),
                    Event::Disconnect { room, user } => state.disconnect(room, user, now),
                    Event::Ask {
                        room,
                        after,
                        key,
                        connection_id,
                    } => {
                        let frame = state.answer(room, after);
                        fanout.send_to(
                            worker,
                            WorkerEvent::PresenceAnswer {
                                key,
                                connection_id,
                                frame,
                            },
                        );
                    }
                }
            }
        }
        Input::Remote(update) => state.remote(update),
        Input::Page {
            room,
            after,
            limit,
            reply,
        } => {
            // The asker may have given up: nothing to do then.
            let _ = reply.send(state.page(room, after, limit));
        }
        Input::Stop => return true,
    }
    false
}
