//! The fleet as the read API shows it: every server's and consumer's
//! snapshot, read from the fleet registry in Redis
//! (`chatflow_broker::fleet`: the ids published within 10 s, then one
//! `MGET` of their keys, expired ones skipped), each given the `ageSeconds`
//! this reader sees and sorted by id. With `--broker memory` or `none`
//! there is no Redis: the servers part is this server alone
//! (`source: "local"`) and the consumers part says it is not available.
//!
//! A document is relayed as the JSON its publisher wrote, not re-typed:
//! during a rolling upgrade the fleet runs two versions, and a reader must
//! neither drop a peer nor strip the fields it does not know. It checks
//! only what it needs — an object naming the id it was indexed under and a
//! valid `publishedAt` — and lists the ids that fail (`unreadable`).
//!
//! Bounded time: the reader has its own Redis connection behind a lock,
//! and one read — waiting for the lock, reconnecting if the last read
//! failed, and both round trips — gets the configured Redis timeout
//! (`--redis-timeout-secs`) in all. Past it, or on any error, the part
//! says why (`error`, naming the Redis address) with no documents, and the
//! next read reconnects: an outage costs an API request at most that long.

use std::io;
use std::time::{Duration, Instant};

use chatflow_broker::fleet::Registry;
use chatflow_broker::RedisConnector;
use chatflow_protocol::time::{now_ms, parse_rfc3339_ms};
use parking_lot::Mutex;
use redis::{Connection, RedisError, RedisResult};
use serde::Serialize;
use serde_json::Value;

use super::snapshot::Latest;
use super::{not_available, round3};
use crate::config::{BrokerKind, Config};

/// The `servers` part of the API's `live` section.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServersPart {
    /// `redis`, or `local` without Redis.
    pub source: &'static str,
    /// Why there are no documents (Redis unreachable, or too slow).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// SERVER SNAPSHOTs (server/API.md), by `serverId`.
    pub servers: Vec<Value>,
    /// Indexed ids whose document could not be read (absent when none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<String>,
}

/// The `consumers` part of the API's `live` section.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsumersPart {
    /// `redis`, or `local` without Redis (then with an `error`).
    pub source: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// CONSUMER SNAPSHOTs (server/API.md), by `consumerId`.
    pub consumers: Vec<Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<String>,
}

/// Reads the fleet's snapshots for the API (any thread; reads take turns
/// on one connection).
pub struct FleetReader {
    source: Source,
}

enum Source {
    // Boxed: the Redis side (client, registries, lock) dwarfs the other.
    Redis(Box<RedisReader>),
    /// No Redis: this server's own latest snapshot.
    Local {
        latest: Latest,
        broker: BrokerKind,
    },
}

impl FleetReader {
    /// A reader for this configuration: from Redis with `--broker
    /// rabbitmq`, otherwise from `latest` (the publisher's
    /// [`StatsPublisher::latest`](super::StatsPublisher::latest)). Connects
    /// lazily: a Redis that is down is the first read's error, not this
    /// call's (which fails only on an unusable Redis address).
    pub fn new(config: &Config, latest: Latest) -> RedisResult<FleetReader> {
        let source = match config.broker {
            BrokerKind::Rabbitmq => {
                let redis = &config.services.redis;
                let topology = &config.services.topology;
                Source::Redis(Box::new(RedisReader {
                    redis: RedisConnector::new(redis),
                    address: redis.display(),
                    timeout: redis.timeout,
                    servers: Registry::servers(topology),
                    consumers: Registry::consumers(topology),
                    con: Mutex::new(None),
                }))
            }
            broker => Source::Local { latest, broker },
        };
        Ok(FleetReader { source })
    }

    /// Every live server's snapshot.
    pub fn read_servers(&self) -> ServersPart {
        match &self.source {
            Source::Redis(reader) => {
                let fresh = reader.read(&reader.servers, "serverId");
                ServersPart {
                    source: "redis",
                    error: fresh.error,
                    servers: fresh.documents,
                    unreadable: fresh.unreadable,
                }
            }
            Source::Local { latest, .. } => {
                let now = now_ms();
                let servers = (latest.get().into_iter())
                    .filter_map(|s| aged(serde_json::to_value(s).ok()?, now))
                    .collect();
                ServersPart {
                    source: "local",
                    error: None,
                    servers,
                    unreadable: Vec::new(),
                }
            }
        }
    }

    /// Every live consumer's snapshot.
    pub fn read_consumers(&self) -> ConsumersPart {
        match &self.source {
            Source::Redis(reader) => {
                let fresh = reader.read(&reader.consumers, "consumerId");
                ConsumersPart {
                    source: "redis",
                    error: fresh.error,
                    consumers: fresh.documents,
                    unreadable: fresh.unreadable,
                }
            }
            Source::Local { broker, .. } => ConsumersPart {
                source: "local",
                error: Some(not_available(*broker)),
                consumers: Vec::new(),
                unreadable: Vec::new(),
            },
        }
    }
}

struct RedisReader {
    redis: RedisConnector,
    address: String,
    /// The whole of one read, lock wait included.
    timeout: Duration,
    servers: Registry,
    consumers: Registry,
    /// `None` after a failure: the next read reconnects.
    con: Mutex<Option<Connection>>,
}

/// One read's outcome.
#[derive(Default)]
struct Fresh {
    error: Option<String>,
    documents: Vec<Value>,
    unreadable: Vec<String>,
}

impl RedisReader {
    fn read(&self, registry: &Registry, id_field: &str) -> Fresh {
        let deadline = Instant::now() + self.timeout;
        let Some(mut con) = self.con.try_lock_until(deadline) else {
            return Fresh {
                error: Some(format!(
                    "redis at {}: busy: other requests held the connection for {:?}",
                    self.address, self.timeout
                )),
                ..Fresh::default()
            };
        };
        let mut found = match self.query(&mut con, registry, deadline) {
            Ok(found) => found,
            Err(e) => {
                // Half a reply may be in flight: start afresh next time.
                *con = None;
                let error = if e.is_timeout() {
                    format!("no answer within {:?}", self.timeout)
                } else {
                    e.to_string()
                };
                return Fresh {
                    error: Some(format!("redis at {}: {error}", self.address)),
                    ..Fresh::default()
                };
            }
        };
        drop(con);
        found.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let now = now_ms();
        let mut fresh = Fresh::default();
        for (id, document) in found {
            let checked = serde_json::from_str(&document)
                .ok()
                .filter(|doc: &Value| doc[id_field].as_str() == Some(id.as_str()))
                .and_then(|doc| aged(doc, now));
            match checked {
                Some(doc) => fresh.documents.push(doc),
                None => fresh.unreadable.push(id),
            }
        }
        fresh
    }

    fn query(
        &self,
        con: &mut Option<Connection>,
        registry: &Registry,
        deadline: Instant,
    ) -> RedisResult<Vec<(String, String)>> {
        let con = match con {
            Some(con) => con,
            None => {
                let timeout = left(deadline)?;
                con.insert(self.redis.connect_with(timeout, Some(timeout))?)
            }
        };
        bound(con, deadline)?;
        let ids = registry.fresh_ids(con, now_ms())?;
        bound(con, deadline)?;
        registry.documents(con, ids)
    }
}

/// What is left of the read's time, or a timeout error.
fn left(deadline: Instant) -> RedisResult<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left < Duration::from_millis(1) {
        return Err(RedisError::from(io::Error::new(
            io::ErrorKind::TimedOut,
            "timed out",
        )));
    }
    Ok(left)
}

/// The next round trip may take what is left of the read's time.
fn bound(con: &Connection, deadline: Instant) -> RedisResult<()> {
    let left = left(deadline)?;
    con.set_read_timeout(Some(left))?;
    con.set_write_timeout(Some(left))
}

/// The document with the `ageSeconds` seen at `now_ms` (never negative: a
/// publisher's clock may run a little ahead of ours), or `None` if it is
/// not an object with a valid `publishedAt`.
fn aged(mut document: Value, now_ms: i64) -> Option<Value> {
    let published = parse_rfc3339_ms(document.get("publishedAt")?.as_str()?)?;
    let age = (now_ms - published).max(0) as f64 / 1000.0;
    document
        .as_object_mut()?
        .insert("ageSeconds".to_string(), round3(age).into());
    Some(document)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ages_come_from_published_at_and_are_never_negative() {
        let doc =
            json!({"serverId": "a", "publishedAt": "2026-12-01T21:10:24.123Z", "ageSeconds": 0.0});
        let published = parse_rfc3339_ms("2026-12-01T21:10:24.123Z").unwrap();
        assert_eq!(
            aged(doc.clone(), published + 1500).unwrap()["ageSeconds"],
            1.5
        );
        assert_eq!(aged(doc, published - 200).unwrap()["ageSeconds"], 0.0);
        assert!(aged(json!({"publishedAt": "yesterday"}), 0).is_none());
        assert!(aged(json!(["publishedAt"]), 0).is_none());
    }

    #[test]
    fn without_redis_the_servers_are_this_one_and_consumers_are_unavailable() {
        let config = Config {
            broker: BrokerKind::Memory,
            ..Config::default()
        };
        let latest = Latest::default();
        let reader = FleetReader::new(&config, latest).unwrap();
        let servers = serde_json::to_value(reader.read_servers()).unwrap();
        assert_eq!(servers, json!({"source": "local", "servers": []}));
        let consumers = serde_json::to_value(reader.read_consumers()).unwrap();
        assert_eq!(
            consumers,
            json!({"source": "local", "error": "not available with --broker memory", "consumers": []})
        );
    }
}
