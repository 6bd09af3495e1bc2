//! The history thread (`history`, one per server on the RabbitMQ broker):
//! it reads rooms' history streams for connections that resume with
//! `?since=`, so no worker ever waits on Redis.
//!
//! A worker asks with [`History::ask`] (a bounded channel: a worker never
//! blocks; past the bound the connection is told the history is
//! unavailable) and gets its [`HistoryPage`] back through its inbox and
//! waker, like a publish confirm. The thread takes every request waiting
//! (up to [`BATCH`]) and reads them in one pipeline on its own Redis
//! connection: a burst of reconnecting clients — a server restart sends
//! every client back at once — costs one round trip per 64 of them.
//!
//! The first request of a resume also asks whether the stream still holds
//! everything after `since` ([`Extent::holds_all_after`]). If not (the
//! position was trimmed, or Redis lost its data), the page says so, and on
//! a server with a database (the read API's `DB_*` settings) the trimmed
//! messages are read from PostgreSQL. A message's server timestamp comes
//! before its position's millisecond (it was accepted, then queued, then
//! appended), so the trimmed ones — positions after `since` and before the
//! oldest entry held — are among the rows stored from `since`'s
//! millisecond up to that entry's: those rows are read, oldest first by
//! server timestamp, without the ones the stream still holds (a backlog
//! can put many held messages in that window, so every id the stream holds
//! is read first: at most the retention, ~3.5 MB at the default 10,000).
//! What this cannot see: clocks of servers and Redis that disagree by more
//! than the window's edges allow, and a message stored at exactly
//! `since`'s millisecond that the client already had (repeated: same
//! `messageId`). The filled messages come in server-timestamp order, not
//! the stream's. After a failed database read the fill is skipped for
//! `DATABASE_RETRY` (5 s), so an outage does not make every resume wait for
//! the pool's timeout.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use chatflow_broker::{RedisConnector, Shutdown};
use chatflow_database::pool::{ReadPool, ReadPoolConfig};
use chatflow_database::read::pages::{self, Order, PageRequest, StoredMessage, Subject};
use chatflow_database::row::unix_micros;
use chatflow_protocol::frame::broadcast_json;
use chatflow_protocol::{Broadcast, MessageId, MessageType, Position, ServerTime, Topology};
use crossbeam_channel::{bounded, select, Receiver, Sender, TryRecvError, TrySendError};
use parking_lot::Mutex;
use redis::Value;
use tungstenite::Utf8Bytes;

use super::stream::{self, Extent};
use crate::config::Config;
use crate::fanout::{Fanout, HistoryPage, Page, WorkerEvent};

/// Requests waiting for the thread; past it a resume is answered
/// "unavailable" at once. (A request is ~64 bytes.)
const QUEUE: usize = 65_536;
/// Requests read in one pipeline.
pub const BATCH: usize = 64;
/// How long the database fill is skipped after it failed.
const DATABASE_RETRY: Duration = Duration::from_secs(5);
/// Entries read per round trip when collecting the ids a stream holds.
const ID_PAGE: usize = 1_000;

/// One read of a room's history, for one resuming connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryRequest {
    /// Who gets the answer: a worker, a connection of it (slab key and id).
    pub worker: usize,
    pub key: usize,
    pub connection_id: u64,
    pub room: u32,
    /// Entries after this position (exclusive), oldest first.
    pub after: Position,
    /// Entries at most.
    pub count: usize,
    /// The first read of a resume: check the history still holds every
    /// entry after `after`; if not, fill up to this many messages from the
    /// database. `None` on the later reads.
    pub first: Option<usize>,
}

/// Counters for `/health`'s broker detail.
#[derive(Debug, Default)]
pub struct HistoryStats {
    /// Requests answered with a page.
    pub reads: AtomicU64,
    /// Resumes whose position was older than the held history.
    pub trimmed: AtomicU64,
    /// Messages filled in from the database.
    pub from_database: AtomicU64,
    /// Requests answered "unavailable" (Redis unreadable, queue full).
    pub failed: AtomicU64,
}

/// The history thread's handle: ask, and join on shutdown.
pub struct History {
    requests: Sender<HistoryRequest>,
    pub stats: Arc<HistoryStats>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl History {
    /// Starts the thread. It connects to Redis when first asked (a resume
    /// is rare next to messages), and to the database only for a fill.
    pub fn start(config: &Config, fanout: Fanout, shutdown: Shutdown) -> anyhow::Result<History> {
        let database = match &config.api {
            Some(api) => Some(
                ReadPool::new(&ReadPoolConfig {
                    database: api.database.clone(),
                    // One thread, one query at a time.
                    max_size: 1,
                    checkout_timeout: api.pool_timeout,
                    statement_timeout: api.statement_timeout,
                    connect_timeout: api.pool_timeout,
                })
                .context("the history's database settings")?,
            ),
            None => None,
        };
        let stats = Arc::new(HistoryStats::default());
        let mut reader = Reader {
            redis: RedisConnector::new(&config.services.redis),
            topology: config.services.topology.clone(),
            fanout,
            con: None,
            database,
            database_down_until: None,
            stats: stats.clone(),
        };
        let (requests, incoming) = bounded(QUEUE);
        let thread = std::thread::Builder::new()
            .name("history".to_string())
            .spawn(move || reader.run(&incoming, &shutdown))?;
        Ok(History {
            requests,
            stats,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues a read; never blocks. `Err` says why it cannot be done.
    pub fn ask(&self, request: HistoryRequest) -> Result<(), &'static str> {
        match self.requests.try_send(request) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                Err("too many resumes waiting for the history")
            }
            Err(TrySendError::Disconnected(_)) => Err("the server is stopping"),
        }
    }

    /// Waits for the thread (after the broker's stop signal).
    pub fn join(&self) {
        if let Some(thread) = self.thread.lock().take() {
            let _ = thread.join();
        }
    }
}

/// The thread's state.
struct Reader {
    redis: RedisConnector,
    topology: Topology,
    fanout: Fanout,
    con: Option<redis::Connection>,
    database: Option<ReadPool>,
    database_down_until: Option<Instant>,
    stats: Arc<HistoryStats>,
}

impl Reader {
    fn run(&mut self, requests: &Receiver<HistoryRequest>, shutdown: &Shutdown) {
        loop {
            let first = select! {
                recv(requests) -> request => match request {
                    Ok(request) => request,
                    Err(_) => return,
                },
                recv(shutdown) -> _ => return,
            };
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match requests.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            self.serve(batch);
        }
    }

    /// Reads a batch in one pipeline and answers every request.
    fn serve(&mut self, batch: Vec<HistoryRequest>) {
        let mut pipe = redis::pipe();
        // Each reply on its own: one room's error is that room's answer.
        pipe.ignore_errors();
        for request in &batch {
            let key = self.topology.history_stream(request.room);
            if request.first.is_some() {
                stream::extent(&mut pipe, &key);
            }
            stream::read_after(&mut pipe, &key, request.after, request.count);
        }
        let replies = match self.query(&pipe) {
            Ok(replies) => replies,
            Err(why) => {
                for request in batch {
                    self.answer(&request, Err(why.clone()));
                }
                return;
            }
        };
        let mut replies = replies.into_iter();
        for request in batch {
            let extent = request.first.map(|_| replies.next().unwrap_or(Value::Nil));
            let entries = replies.next().unwrap_or(Value::Nil);
            let result = self.page(&request, extent.as_ref(), &entries);
            self.answer(&request, result);
        }
    }

    /// Runs the pipeline, connecting first if needed; any failure drops
    /// the connection (its state is unknown) and is the answer of the
    /// whole batch.
    fn query(&mut self, pipe: &redis::Pipeline) -> Result<Vec<Value>, String> {
        if self.con.is_none() {
            let con = self
                .redis
                .connect()
                .map_err(|e| format!("Redis at {} is unreachable: {e}", self.redis.display()))?;
            self.con = Some(con);
        }
        let con = self.con.as_mut().expect("connected above");
        pipe.query(con).map_err(|e| {
            self.con = None;
            format!(
                "reading the history from Redis at {}: {e}",
                self.redis.display()
            )
        })
    }

    fn page(
        &mut self,
        request: &HistoryRequest,
        extent: Option<&Value>,
        entries: &Value,
    ) -> Result<Page, String> {
        let bad = |e: stream::ReadError| format!("reading room {}'s history: {e}", request.room);
        let entries = stream::parse_entries(entries).map_err(bad)?;
        let mut page = Page {
            entries: entries.into_iter().map(|e| (e.position, e.frame)).collect(),
            ..Page::default()
        };
        if let (Some(extent), Some(fill)) = (extent, request.first) {
            let extent = stream::parse_extent(extent).map_err(bad)?;
            if !extent.holds_all_after(request.after) {
                page.trimmed = true;
                self.stats.trimmed.fetch_add(1, Ordering::Relaxed);
                self.fill(request, &extent, fill, &mut page);
            }
        }
        Ok(page)
    }

    /// Fills a trimmed page's gap from the database, if there is one.
    fn fill(&mut self, request: &HistoryRequest, extent: &Extent, limit: usize, page: &mut Page) {
        if self.database.is_none() {
            page.note = Some("this server has no database to fill the gap from".to_string());
            return;
        }
        if self
            .database_down_until
            .is_some_and(|until| Instant::now() < until)
        {
            page.note = Some("the database is unavailable: nothing filled".to_string());
            return;
        }
        let held = match self.held_ids(request.room) {
            Ok(held) => held,
            Err(why) => {
                page.note = Some(format!("nothing filled from the database: {why}"));
                return;
            }
        };
        let read = PageRequest {
            subject: Subject::Room(request.room as i32),
            start: Some(UNIX_EPOCH + Duration::from_millis(request.after.ms)),
            // Up to and with the oldest held entry's millisecond.
            end: Some(UNIX_EPOCH + Duration::from_millis(extent.held_since_ms() + 1)),
            order: Order::Asc,
            // Held messages are dropped after the read: room for them.
            limit: u32::try_from(limit + held.len()).unwrap_or(u32::MAX),
            after: None,
        };
        let pool = self.database.as_ref().expect("checked above");
        let stored = pool.get().map_err(|e| e.to_string()).and_then(|mut con| {
            pages::page(&mut *con, &read).map_err(|e| chatflow_database::describe(&e))
        });
        let stored = match stored {
            Ok(stored) => stored,
            Err(why) => {
                self.database_down_until = Some(Instant::now() + DATABASE_RETRY);
                page.note = Some(format!("the database fill failed: {why}"));
                return;
            }
        };
        let mut missing: Vec<Utf8Bytes> = stored
            .messages
            .iter()
            .filter(|m| !held.contains(&MessageId(m.message_id.as_u128())))
            .filter_map(stored_frame)
            .map(Utf8Bytes::from)
            .collect();
        page.database_truncated = stored.next.is_some() || missing.len() > limit;
        missing.truncate(limit);
        self.stats
            .from_database
            .fetch_add(missing.len() as u64, Ordering::Relaxed);
        page.from_database = missing;
    }

    /// The id of every message a room's stream holds.
    fn held_ids(&mut self, room: u32) -> Result<HashSet<MessageId>, String> {
        let key = self.topology.history_stream(room);
        let mut held = HashSet::new();
        let mut after = Position::ZERO;
        loop {
            let mut pipe = redis::pipe();
            stream::read_after(&mut pipe, &key, after, ID_PAGE);
            let reply = self.query(&pipe)?;
            let entries = stream::parse_entries(reply.first().unwrap_or(&Value::Nil))
                .map_err(|e| e.to_string())?;
            let full = entries.len() == ID_PAGE;
            for entry in &entries {
                held.extend(message_id_of(&entry.frame));
            }
            match entries.last() {
                Some(last) if full => after = last.position,
                _ => return Ok(held),
            }
        }
    }

    fn answer(&self, request: &HistoryRequest, result: Result<Page, String>) {
        let counter = match result {
            Ok(_) => &self.stats.reads,
            Err(_) => &self.stats.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        // A worker that has exited has no one to tell.
        self.fanout.send_to(
            request.worker,
            WorkerEvent::History(Box::new(HistoryPage {
                key: request.key,
                connection_id: request.connection_id,
                result,
            })),
        );
    }
}

/// The `messageId` of a `message` frame of ours (its value has no escapes).
fn message_id_of(frame: &str) -> Option<MessageId> {
    const KEY: &str = "\"messageId\":\"";
    let start = frame.find(KEY)? + KEY.len();
    frame.get(start..start + 36)?.parse().ok()
}

/// A stored message as the `message` frame it was broadcast as, without a
/// position (it has none any more). The sender's timestamp is the stored
/// instant in RFC 3339 (the text as sent is not stored).
fn stored_frame(m: &StoredMessage) -> Option<String> {
    let ms = |t: SystemTime| ServerTime(unix_micros(t).div_euclid(1000));
    Some(broadcast_json(&Broadcast {
        message_id: MessageId(m.message_id.as_u128()),
        room_id: u32::try_from(m.room_id).ok()?,
        user_id: u32::try_from(m.user_id).ok()?,
        username: Cow::Borrowed(&m.username),
        message: Cow::Borrowed(&m.message),
        message_type: MessageType::parse(&m.message_type)?,
        timestamp: Cow::Owned(ms(m.client_timestamp).to_string()),
        server_timestamp: ms(m.server_timestamp),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_message_becomes_its_broadcast_frame() {
        let at = UNIX_EPOCH + Duration::from_millis(1_795_744_800_123);
        let stored = StoredMessage {
            message_id: uuid::Uuid::from_u128(7),
            room_id: 3,
            user_id: 42,
            username: "user42".to_string(),
            message: "hi".to_string(),
            message_type: "JOIN".to_string(),
            client_timestamp: at,
            server_timestamp: at + Duration::from_millis(2),
            server_id: "s".to_string(),
        };
        let frame = stored_frame(&stored).unwrap();
        let Ok(chatflow_protocol::ServerFrame::Message(b)) =
            chatflow_protocol::ServerFrame::parse(&frame)
        else {
            panic!("{frame}");
        };
        assert_eq!(message_id_of(&frame), Some(MessageId(7)));
        assert_eq!(b.message_id, MessageId(7));
        assert_eq!((b.room_id, b.user_id), (3, 42));
        assert_eq!(b.message_type, MessageType::Join);
        assert_eq!(b.timestamp, "2026-11-27T02:00:00.123Z");
        assert_eq!(b.server_timestamp, ServerTime(1_795_744_800_125));
        assert_eq!(Position::of_frame(&frame), None);
        let odd = StoredMessage {
            message_type: "SHOUT".to_string(),
            ..stored
        };
        assert_eq!(stored_frame(&odd), None);
    }
}
