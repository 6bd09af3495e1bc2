//! The `/health` document ([`Health`]): status (`ok`, `degraded` with the
//! reasons, or `shutting_down`), the state of every connection, threads
//! that died, this instance's share of the queues and its standing on each
//! (owner or standby; active, waiting, unregistered or delayed — see
//! [`crate::holding`] for what RabbitMQ lets a consumer know), rates,
//! totals and latency quantiles — built from [`Shared`] on each request,
//! serialised as camelCase JSON.
//!
//! Degraded means "running, recovering by itself, but not doing all its
//! job": a broker, Redis or database outage, or a dead thread (which will
//! not recover by itself: its queues stall until a restart). `/health` is
//! readiness: it answers 503 with this document whenever the status is
//! not `ok` ([`crate::http`]); `/livez` says only that the process runs.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::assignment::{Duty, Standby};
use crate::counters::{Histograms, Totals, WriterStats};
use crate::holding::{unix_ms, Holding};
use crate::state::Shared;
use crate::threads::DeadThread;

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// `ok`, `degraded` (see `reason`) or `shutting_down`.
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub uptime_seconds: f64,
    pub namespace: String,
    pub rooms: u32,
    pub consumers: usize,
    pub prefetch: u16,
    pub ack_batch: usize,
    pub persistence: bool,
    pub rabbitmq: RabbitStatus,
    pub redis: RedisStatus,
    /// Present with persistence on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseStatus>,
    /// Threads that panicked or stopped before shutdown (absent when none
    /// did).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dead_threads: Vec<DeadThread>,
    /// This instance's share (`--instances`, `--instance`) and how its
    /// queues stand.
    pub instance: InstanceStatus,
    /// Every queue this instance consumes, room-major.
    pub queues: Vec<QueueStatus>,
    pub rates: Rates,
    pub per_room: Vec<RoomStatus>,
    pub totals: Totals,
    pub latency: Latency,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RabbitStatus {
    pub address: String,
    pub connected: bool,
    pub consumers_connected: usize,
    pub connections: Vec<LinkStatus>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkStatus {
    pub index: usize,
    pub connected: bool,
    pub consumers: usize,
    pub consumers_up: usize,
    pub reconnects: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RedisStatus {
    pub address: String,
    pub connected: bool,
    /// The sampler's once-a-second round trip (its fleet snapshot's
    /// publish) succeeded.
    pub ping_ok: bool,
    pub consumers_connected: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseStatus {
    pub address: String,
    pub connected: bool,
    pub writers: usize,
    pub writers_connected: usize,
    pub rows: u64,
    pub rows_per_second: f64,
    pub batches: u64,
    pub duplicate_batches: u64,
    pub duplicates_dropped: u64,
    pub retries: u64,
    /// Rows the database refused on their own, handed back to be
    /// dead-lettered (a bad row, never an outage).
    pub rows_dead_lettered: u64,
    /// Refused writes split in two to find the refused rows.
    pub batch_splits: u64,
    /// COPY + commit per batch, microseconds.
    pub copy_latency_us: Quantiles,
    pub batch_rows: Quantiles,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceStatus {
    /// K of N.
    pub instance: u32,
    pub instances: u32,
    /// Standing by for the other instances' queues (not `--no-standby`).
    pub standby: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub standby_delay_seconds: Option<f64>,
    /// How the owned queues stand, and how the others (standby) do.
    pub owned: RoleCounts,
    pub standing_by: RoleCounts,
    /// Registrations that got their first delivery (became active), and
    /// standby registrations handed back to their owner, since start.
    pub activations: u64,
    pub yields: u64,
}

/// Queues per role.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoleCounts {
    pub queues: usize,
    /// Delivered to on its current registration: the queue's single
    /// active consumer.
    pub active: usize,
    /// Registered, nothing delivered yet: waiting behind the active
    /// consumer (a standby, or an owner back before its standby handed
    /// over), or the active consumer of a queue with nothing to deliver.
    pub waiting: usize,
    /// Not registered (no channel, or between channels).
    pub unregistered: usize,
    /// A standby that has not registered yet (its start-up delay).
    pub delayed: usize,
}

impl RoleCounts {
    fn count(&mut self, holding: &Holding) {
        self.queues += 1;
        match holding {
            Holding::Active { .. } => self.active += 1,
            Holding::Waiting { .. } => self.waiting += 1,
            Holding::Unregistered { .. } => self.unregistered += 1,
            Holding::Delayed { .. } => self.delayed += 1,
        }
    }

    /// The count of role `role` (one of [`crate::holding::ROLES`]).
    pub fn of(&self, role: &str) -> usize {
        match role {
            "active" => self.active,
            "waiting" => self.waiting,
            "unregistered" => self.unregistered,
            "delayed" => self.delayed,
            _ => 0,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueStatus {
    pub queue: String,
    pub room: u32,
    pub shard: u32,
    /// `owner` or `standby`.
    pub duty: Duty,
    /// The instance owning it.
    pub owner: u32,
    /// `active`, `waiting`, `unregistered` or `delayed` (see
    /// [`RoleCounts`]).
    pub role: &'static str,
    /// Since when (Unix ms) it has had this role; for `delayed`, when it
    /// registers.
    pub since_unix_ms: i64,
    /// Seconds in this role (0 while delayed).
    pub for_seconds: f64,
    /// Deliveries on the current registration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deliveries: Option<u64>,
    /// The broker's tag for the current registration, as `rabbitmqctl
    /// list_consumers` shows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consumer_tag: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rates {
    pub window_seconds: f64,
    pub consumed_per_second: f64,
    pub broadcasts_per_second: f64,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomStatus {
    pub room: u32,
    pub consumed: u64,
    pub consumed_per_second: f64,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Latency {
    pub redis_publish_us: Quantiles,
    pub lag_ms: Quantiles,
    pub batch_size: Quantiles,
}

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Quantiles {
    pub count: u64,
    pub p50: u64,
    pub p95: u64,
    pub p99: u64,
    pub max: u64,
}

impl Quantiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Quantiles::default();
        }
        Quantiles {
            count: h.len(),
            p50: h.value_at_quantile(0.5),
            p95: h.value_at_quantile(0.95),
            p99: h.value_at_quantile(0.99),
            max: h.max(),
        }
    }
}

/// "`what` (last error: `error`)", or just `what`.
fn with_last_error(mut what: String, error: Option<&String>) -> String {
    if let Some(error) = error {
        let _ = write!(what, " (last error: {error})");
    }
    what
}

impl Health {
    /// The document as of now.
    pub fn of(shared: &Shared) -> Health {
        Health::with_histograms(shared, &shared.counters.histograms())
    }

    /// [`Health::of`] with the queue consumers' histograms already merged
    /// ([`Counters::histograms`](crate::counters::Counters::histograms)):
    /// the sampler merges them once a tick for both the document and its
    /// lag window, since merging a hundred queues' histograms is most of
    /// what a tick costs.
    pub fn with_histograms(shared: &Shared, h: &Histograms) -> Health {
        let config = &shared.config;
        let counters = &shared.counters;
        let consumers = counters.queues.len();
        let amqp_up = counters.amqp_up();
        let redis_up = counters.redis_up();
        let links: Vec<LinkStatus> = counters
            .links
            .iter()
            .enumerate()
            .map(|(index, l)| {
                let mine = || shared.link_of.iter().zip(&counters.queues);
                LinkStatus {
                    index,
                    connected: l.connected.load(Ordering::Relaxed),
                    consumers: mine().filter(|(&i, _)| i == index).count(),
                    consumers_up: mine()
                        .filter(|(&i, q)| i == index && q.amqp_up.load(Ordering::Relaxed))
                        .count(),
                    reconnects: l.reconnects.load(Ordering::Relaxed),
                    last_error: l.last_error.lock().clone(),
                }
            })
            .collect();
        let (instance, queues) = standing(shared);
        // A standby still in its start-up delay is not registered on
        // purpose: not an outage.
        let delayed = instance.standing_by.delayed;
        let rabbitmq_connected =
            amqp_up + delayed == consumers && links.iter().all(|l| l.connected);
        let probe = &counters.redis_probe;
        let ping_ok = probe.up.load(Ordering::Relaxed);
        let redis_connected = ping_ok && redis_up == consumers;
        let redis_error = probe.last_error.lock().clone();
        let dead_threads = shared.threads.dead();
        let database = config.enable_persistence.then(|| database_status(shared));

        let mut reasons = Vec::new();
        if !dead_threads.is_empty() {
            let names: Vec<String> = dead_threads
                .iter()
                .map(|d| format!("{} {}", d.name, d.reason))
                .collect();
            reasons.push(format!(
                "{} thread(s) dead, their queues stalled until a restart: {}",
                dead_threads.len(),
                names.join(", ")
            ));
        }
        if !rabbitmq_connected {
            reasons.push(with_last_error(
                format!(
                    "rabbitmq at {}: {amqp_up} of {} consumers connected",
                    config.amqp_display(),
                    consumers - delayed
                ),
                links.iter().find_map(|l| l.last_error.as_ref()),
            ));
        }
        if !redis_connected {
            let mut reason = format!(
                "redis at {}: broadcasts failing on {} of {consumers} consumers",
                config.redis_display(),
                consumers - redis_up
            );
            if !ping_ok {
                reason.push_str(", ping failing");
            }
            reasons.push(with_last_error(reason, redis_error.as_ref()));
        }
        if let Some(db) = database.as_ref().filter(|db| !db.connected) {
            reasons.push(with_last_error(
                format!(
                    "postgresql at {}: {} of {} writers failing, acks held back",
                    db.address,
                    db.writers - db.writers_connected,
                    db.writers
                ),
                db.last_error.as_ref(),
            ));
        }
        let status = if shared.is_shutting_down() {
            "shutting_down"
        } else if reasons.is_empty() {
            "ok"
        } else {
            "degraded"
        };

        let rates = shared.rates.lock().rates(config.rooms().count() as usize);
        let per_room = counters
            .consumed_per_room()
            .into_iter()
            .enumerate()
            .map(|(i, consumed)| RoomStatus {
                room: i as u32 + 1,
                consumed,
                consumed_per_second: rates.per_room.get(i).copied().unwrap_or(0.0),
            })
            .collect();
        Health {
            status,
            reason: (!reasons.is_empty()).then(|| reasons.join("; ")),
            uptime_seconds: shared.started.elapsed().as_secs_f64(),
            namespace: config.services.topology.namespace.clone(),
            rooms: config.rooms().count(),
            consumers,
            prefetch: config.prefetch,
            ack_batch: config.ack_batch,
            persistence: config.enable_persistence,
            rabbitmq: RabbitStatus {
                address: config.amqp_display(),
                connected: rabbitmq_connected,
                consumers_connected: amqp_up,
                connections: links,
            },
            redis: RedisStatus {
                address: config.redis_display(),
                connected: redis_connected,
                ping_ok,
                consumers_connected: redis_up,
                last_error: redis_error,
            },
            database,
            dead_threads,
            instance,
            queues,
            rates: Rates {
                window_seconds: rates.window.as_secs_f64(),
                consumed_per_second: rates.per_room.iter().sum(),
                broadcasts_per_second: rates.broadcasts,
            },
            per_room,
            totals: counters.totals(),
            latency: Latency {
                redis_publish_us: Quantiles::of(&h.publish_us),
                lag_ms: Quantiles::of(&h.lag_ms),
                batch_size: Quantiles::of(&h.batch_size),
            },
        }
    }
}

/// This instance's share and every queue's standing.
fn standing(shared: &Shared) -> (InstanceStatus, Vec<QueueStatus>) {
    let assignment = &shared.config.assignment;
    let now = unix_ms();
    let mut owned = RoleCounts::default();
    let mut standing_by = RoleCounts::default();
    let (mut activations, mut yields) = (0, 0);
    let queues = (shared.queues.iter().zip(&shared.counters.queues))
        .map(|(slot, stats)| {
            let holding = stats.holding.lock().clone();
            match slot.duty {
                Duty::Owner => owned.count(&holding),
                Duty::Standby => standing_by.count(&holding),
            }
            activations += stats.activations.load(Ordering::Relaxed);
            yields += stats.yields.load(Ordering::Relaxed);
            let registration = holding.registration();
            let since = holding.since_ms();
            QueueStatus {
                queue: slot.name.clone(),
                room: slot.room,
                shard: slot.shard,
                duty: slot.duty,
                owner: slot.owner,
                role: holding.role(),
                since_unix_ms: since,
                for_seconds: now.saturating_sub(since).max(0) as f64 / 1000.0,
                deliveries: registration.map(|r| {
                    (stats.consumed.load(Ordering::Relaxed)).saturating_sub(r.consumed_before)
                }),
                consumer_tag: registration.map(|r| r.tag.clone()),
            }
        })
        .collect();
    let delay = match assignment.standby {
        Standby::After(delay) => Some(delay.as_secs_f64()),
        Standby::Off => None,
    };
    let instance = InstanceStatus {
        instance: assignment.instance,
        instances: assignment.instances,
        standby: delay.is_some(),
        standby_delay_seconds: delay,
        owned,
        standing_by,
        activations,
        yields,
    };
    (instance, queues)
}

/// The database section (persistence on).
fn database_status(shared: &Shared) -> DatabaseStatus {
    let counters = &shared.counters;
    let writers = &counters.writers;
    let sum = |f| counters.sum_writers(f);
    let failing = |w: &&WriterStats| !w.connected.load(Ordering::Relaxed);
    let h = counters.writer_histograms();
    let writers_connected = writers.len() - writers.iter().filter(failing).count();
    DatabaseStatus {
        address: shared.config.database.display(),
        connected: writers_connected == writers.len(),
        writers: writers.len(),
        writers_connected,
        rows: sum(|w| &w.rows),
        rows_per_second: shared.rates.lock().rates(0).rows,
        batches: sum(|w| &w.batches),
        duplicate_batches: sum(|w| &w.duplicate_batches),
        duplicates_dropped: sum(|w| &w.duplicates_dropped),
        retries: sum(|w| &w.retries),
        rows_dead_lettered: sum(|w| &w.rows_dead_lettered),
        batch_splits: sum(|w| &w.batch_splits),
        copy_latency_us: Quantiles::of(&h.latency_us),
        batch_rows: Quantiles::of(&h.batch_sizes),
        last_error: writers
            .iter()
            .filter(failing)
            .map(|w| w.last_error.lock().clone())
            .find(|e| !e.is_empty()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{for_tests, for_tests_as};

    #[test]
    fn degraded_with_a_reason_until_every_consumer_is_up() {
        let (_trigger, s) = for_tests(2);
        let h = Health::of(&s);
        assert_eq!(h.status, "degraded");
        assert!(h.reason.as_deref().unwrap().contains("rabbitmq"));
        for q in &s.counters.queues {
            q.amqp_up.store(true, Ordering::Relaxed);
        }
        for l in &s.counters.links {
            l.connected.store(true, Ordering::Relaxed);
        }
        assert_eq!(Health::of(&s).status, "ok");
        s.counters.queues[3]
            .redis_up
            .store(false, Ordering::Relaxed);
        let h = Health::of(&s);
        assert_eq!(h.status, "degraded");
        assert!(
            h.reason.as_deref().unwrap().contains("redis"),
            "{:?}",
            h.reason
        );
    }

    #[test]
    fn each_queue_says_its_duty_and_role_and_delayed_standbys_are_no_outage() {
        use crate::assignment::{Assignment, Standby, DEFAULT_STANDBY_DELAY};
        use crate::holding::Registration;
        let (_trigger, s) = for_tests_as(
            1,
            Assignment {
                instances: 2,
                instance: 2,
                standby: Standby::After(DEFAULT_STANDBY_DELAY),
            },
        );
        s.counters.links[0].connected.store(true, Ordering::Relaxed);
        let registration = |tag: &str| Registration {
            tag: tag.to_string(),
            at_ms: unix_ms() - 1500,
            consumed_before: 2,
        };
        // Shards 1 and 3 are instance 2's; 0, 2, 4 instance 1's.
        for (i, q) in s.counters.queues.iter().enumerate() {
            *q.holding.lock() = if i % 2 == 1 {
                q.amqp_up.store(true, Ordering::Relaxed);
                Holding::Active {
                    since_ms: unix_ms() - 1500,
                    registration: registration(&format!("tag-{i}")),
                }
            } else {
                Holding::Delayed {
                    until_ms: unix_ms() + 3000,
                }
            };
        }
        crate::counters::add(&s.counters.queues[1].consumed, 5);
        let h = Health::of(&s);
        assert_eq!(h.status, "ok", "{:?}", h.reason);
        assert_eq!((h.instance.instance, h.instance.instances), (2, 2));
        assert_eq!(h.instance.standby_delay_seconds, Some(5.0));
        let owned = RoleCounts {
            queues: 2,
            active: 2,
            ..RoleCounts::default()
        };
        assert_eq!(h.instance.owned, owned);
        assert_eq!(
            (
                h.instance.standing_by.queues,
                h.instance.standing_by.delayed
            ),
            (3, 3)
        );
        let json = serde_json::to_value(&h).unwrap();
        let q1 = &json["queues"][1];
        assert_eq!(q1["queue"], "chatflow.room.1.1");
        assert_eq!(
            (q1["duty"].as_str(), q1["role"].as_str()),
            (Some("owner"), Some("active"))
        );
        assert_eq!(
            (q1["owner"].as_u64(), q1["deliveries"].as_u64()),
            (Some(2), Some(3))
        );
        assert_eq!(q1["consumerTag"], "tag-1");
        assert!(q1["forSeconds"].as_f64().unwrap() >= 1.5, "{q1}");
        let q0 = &json["queues"][0];
        assert_eq!(
            (q0["duty"].as_str(), q0["role"].as_str()),
            (Some("standby"), Some("delayed"))
        );
        assert!(q0.get("consumerTag").is_none(), "{q0}");
        // Once the delay is over, an unregistered standby is an outage.
        *s.counters.queues[0].holding.lock() = Holding::default();
        let h = Health::of(&s);
        assert_eq!(h.status, "degraded");
        assert!(h.reason.unwrap().contains("2 of 3 consumers connected"));
    }

    #[test]
    fn a_dead_thread_degrades_health_and_is_named() {
        let (mut trigger, s) = for_tests(1);
        for q in &s.counters.queues {
            q.amqp_up.store(true, Ordering::Relaxed);
        }
        s.counters.links[0].connected.store(true, Ordering::Relaxed);
        assert_eq!(Health::of(&s).status, "ok");
        fn on_fire() {
            panic!("disk on fire")
        }
        s.threads
            .spawn("writer-3", on_fire)
            .unwrap()
            .join()
            .unwrap();
        let h = Health::of(&s);
        assert_eq!(h.status, "degraded");
        let reason = h.reason.unwrap();
        assert!(
            reason.contains("writer-3 panicked: disk on fire"),
            "{reason}"
        );
        let json = serde_json::to_value(Health::of(&s)).unwrap();
        assert_eq!(json["deadThreads"][0]["name"], "writer-3");
        trigger.signal();
        assert_eq!(Health::of(&s).status, "shutting_down");
    }
}
