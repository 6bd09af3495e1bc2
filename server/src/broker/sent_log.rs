//! The sent log: what makes sends idempotent across connections and
//! servers. A message a client names (`clientMessageId`) is claimed in
//! Redis, shared by every server, before it is published:
//! `SET {ns}:sent:{userId}:{clientMessageId} "{messageId}|{serverMs}" NX GET EX window`
//! either takes the name (a new message: published under its own id) or
//! returns the id and server time the first send got (a retry: published
//! again under *those*, so storage keeps one row — the primary key is
//! `(message_id, server_timestamp)` — the consumer suppresses the repeated
//! broadcast, and the client's ack repeats the first one's).
//!
//! Why republish rather than answer from the log: the first send may never
//! have been confirmed (its server died between publish and confirm, the
//! broker nacked it), and only a confirm says the message is safe. A retry
//! of a confirmed message costs one more publish, deduplicated downstream.
//!
//! The claims of one publisher burst go in one pipeline, so the log costs a
//! Redis round trip per burst, not per message. Redis unreachable: the
//! claims fail ([`PublishError::SendLogUnreachable`], "never reached the
//! broker: retry"), because publishing without the log could store a
//! retry twice; reconnects are tried at most every [`RETRY_AFTER`], so an
//! outage refuses at once instead of stalling every burst on a timeout.
//!
//! [`PublishError::SendLogUnreachable`]: crate::fanout::PublishError::SendLogUnreachable

use std::time::{Duration, Instant};

use chatflow_broker::{RedisConnector, RedisEndpoint};
use chatflow_protocol::{MessageId, ServerTime, Topology};

use crate::fanout::FirstSent;

/// After a failure, how long claims fail at once before a reconnect is
/// tried again.
const RETRY_AFTER: Duration = Duration::from_millis(250);

/// One message to claim: its name and the id it would get if new.
pub struct Claim {
    pub user_id: u32,
    pub client_message_id: String,
    pub first: FirstSent,
}

/// A publisher's connection to the sent log.
pub struct SentLog {
    redis: RedisConnector,
    topology: Topology,
    window_secs: u64,
    connection: Option<redis::Connection>,
    /// No reconnect before this (after a failure).
    down_until: Option<Instant>,
}

impl SentLog {
    pub fn new(
        endpoint: &RedisEndpoint,
        topology: Topology,
        window: Duration,
    ) -> redis::RedisResult<Self> {
        Ok(SentLog {
            redis: RedisConnector::new(endpoint),
            topology,
            window_secs: window.as_secs().max(1),
            connection: None,
            down_until: None,
        })
    }

    /// For each claim: `Ok(None)` if it is new (the name is now taken),
    /// `Ok(Some(first))` if it is a retry, or `Err` for all of them when
    /// the log cannot be reached.
    pub fn claim(&mut self, claims: &[&Claim]) -> Result<Vec<Option<FirstSent>>, String> {
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for claim in claims {
            let key = self
                .topology
                .sent_key(claim.user_id, &claim.client_message_id);
            let value = format!("{}|{}", claim.first.message_id, claim.first.server_time.0);
            pipe.cmd("SET")
                .arg(key)
                .arg(value)
                .arg("NX")
                .arg("GET")
                .arg("EX")
                .arg(self.window_secs);
        }
        let connection = self.connection()?;
        match pipe.query::<Vec<Option<String>>>(connection) {
            Ok(replies) => Ok(replies
                .into_iter()
                .map(|reply| reply.as_deref().and_then(parse))
                .collect()),
            Err(e) => {
                self.failed();
                Err(format!("redis at {}: {e}", self.redis.display()))
            }
        }
    }

    fn connection(&mut self) -> Result<&mut redis::Connection, String> {
        if self.connection.is_none() {
            if self.down_until.is_some_and(|t| Instant::now() < t) {
                return Err(format!(
                    "redis at {}: unreachable (retrying)",
                    self.redis.display()
                ));
            }
            match self.redis.connect() {
                Ok(c) => {
                    self.connection = Some(c);
                    self.down_until = None;
                }
                Err(e) => {
                    self.failed();
                    return Err(format!("redis at {}: {e}", self.redis.display()));
                }
            }
        }
        Ok(self.connection.as_mut().expect("connected above"))
    }

    fn failed(&mut self) {
        self.connection = None;
        self.down_until = Some(Instant::now() + RETRY_AFTER);
    }
}

/// `"{messageId}|{serverMs}"`, as [`SentLog::claim`] writes it.
fn parse(value: &str) -> Option<FirstSent> {
    let (id, ms) = value.split_once('|')?;
    Some(FirstSent {
        message_id: id.parse::<MessageId>().ok()?,
        server_time: ServerTime(ms.parse().ok()?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_garbage_is_ignored() {
        let first = FirstSent {
            message_id: chatflow_protocol::IdGenerator::with_instance(3).next_id(1_796_000_000_000),
            server_time: ServerTime(1_796_000_000_000),
        };
        let text = format!("{}|{}", first.message_id, first.server_time.0);
        assert_eq!(parse(&text), Some(first));
        assert_eq!(parse("garbage"), None);
        assert_eq!(parse("not-a-uuid|12"), None);
    }
}
