//! Drain benchmark: publishes a backlog of envelopes to a fresh namespace
//! as servers would (persistent, publisher-confirmed, routed by room and
//! shard), then starts the consumer and times how fast it broadcasts them
//! to Redis and acks them all. Deletes its topology at the end.
//!
//! ```text
//! cargo run --release -p chatflow-consumer --example drain -- --messages 100000 --rooms 20
//! ```
//!
//! Persistence is on by default (as in the consumer): rows go to DB_NAME
//! (default `chatflow`, see database/setup_database.sh);
//! `--enable-persistence false` measures broadcast-then-ack alone;
//! `--no-rollups` stores without the analytics rollups (what they cost).
//!
//! Services on localhost (RABBITMQ_HOST/REDIS_HOST etc. are honoured as by
//! the consumer). `--subscribe` also counts what arrives on Redis. Every
//! broadcast is appended to its room's history stream as in production;
//! the consumer's hidden `--no-history` measures the drain without that
//! append. The streams are deleted at the end with the topology, also
//! when the run fails. `--json FILE` also writes the figures as JSON, with
//! the drain's window in Unix seconds (`bench/drain_ratio.sh` reads each
//! process's CPU over it).

use chatflow_broker::Declare;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use amiquip::{AmqpProperties, Channel, Confirm, ConfirmSmoother, Publish};
use anyhow::{bail, Context};
use chatflow_consumer::{Args, Config, Consumer};
use chatflow_protocol::Topology;
use chatflow_protocol::{routing_key, ClientMessage, Envelope, IdGenerator, ServerTime};
use clap::Parser;
use serde_json::json;

#[derive(Debug, Parser)]
struct Bench {
    /// Messages in the backlog.
    #[arg(long, default_value_t = 100_000)]
    messages: u64,
    /// Also subscribe to the room channels and count broadcasts received.
    #[arg(long)]
    subscribe: bool,
    /// Also write the figures to FILE as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    #[command(flatten)]
    consumer: Args,
}

fn main() -> anyhow::Result<()> {
    let mut bench = Bench::parse();
    bench.consumer.services.namespace = format!("drain-{}", std::process::id());
    bench.consumer.metrics_bind = "127.0.0.1:0".to_string();
    let config = bench.consumer.into_config()?;
    let topology = config.topology();

    let mut connection =
        chatflow_broker::amqp::connect(&config.amqp_endpoint()).context("RabbitMQ")?;
    let channel = connection.open_channel(None)?;
    topology.declare(&channel)?;
    let outcome = drain(
        bench.messages,
        bench.subscribe,
        bench.json.as_deref(),
        &config,
        &topology,
        &channel,
    );
    // Whatever happened: the namespace's queues, exchange and streams go.
    let cleanup = delete_namespace(&config, &topology, &channel);
    channel.close()?;
    connection.close()?;
    outcome.and(cleanup)
}

fn delete_namespace(config: &Config, topology: &Topology, channel: &Channel) -> anyhow::Result<()> {
    topology.delete(channel)?;
    let streams: Vec<String> = topology
        .rooms
        .iter()
        .map(|room| topology.history_stream(room))
        .collect();
    let redis_url = format!("redis://{}/", config.redis_display());
    let mut con = redis::Client::open(redis_url)?.get_connection()?;
    redis::cmd("DEL").arg(streams).query::<()>(&mut con)?;
    Ok(())
}

fn unix_s(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

fn drain(
    n: u64,
    subscribe: bool,
    json_path: Option<&std::path::Path>,
    config: &Config,
    topology: &Topology,
    channel: &Channel,
) -> anyhow::Result<()> {
    // The backlog: rooms round-robin, and users varying independently of
    // the room so that every room's five shards (queues) get their share,
    // as with real traffic (a user id tied to the room would leave four
    // queues in five idle).
    let published = Instant::now();
    let confirms = channel.listen_for_publisher_confirms()?;
    channel.enable_publisher_confirms()?;
    let mut ids = IdGenerator::new();
    let rooms = config.rooms().count() as u64;
    for i in 0..n {
        let user = (i / rooms * 7919) % 100_000 + 1;
        let room = (i % rooms) as u32 + 1;
        let text = format!(
            r#"{{"userId":"{user}","username":"user{user}","message":"drain message {i} with some typical chat text","timestamp":"2026-11-27T02:00:00.123Z","messageType":"TEXT"}}"#
        );
        let message = ClientMessage::parse(&text).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let now = ServerTime::now();
        let envelope = Envelope::accepted(&message, room, ids.next_id(now.0), now, "drain-bench");
        let properties = AmqpProperties::default().with_delivery_mode(2);
        channel.basic_publish(
            topology.exchange(),
            Publish::with_properties(
                &envelope.encode(),
                routing_key(room, envelope.shard()),
                properties,
            ),
        )?;
    }
    let mut smoother = ConfirmSmoother::new();
    let mut acked = 0;
    while acked < n {
        let confirm = confirms.recv_timeout(Duration::from_secs(60))?;
        for c in smoother.process(confirm) {
            match c {
                Confirm::Ack(_) => acked += 1,
                Confirm::Nack(p) => bail!("broker nacked {}", p.delivery_tag),
            }
        }
    }
    let publish_secs = published.elapsed().as_secs_f64();
    println!(
        "published {n} envelopes in {publish_secs:.2} s ({:.0} msg/s, confirmed)",
        n as f64 / publish_secs
    );

    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let subscriber = subscribe.then(|| {
        let (received, stop, pattern) = (received.clone(), stop.clone(), topology.redis_pattern());
        let redis_url = format!("redis://{}/", config.redis_display());
        thread::spawn(move || -> redis::RedisResult<()> {
            let mut con = redis::Client::open(redis_url)?.get_connection()?;
            let mut pubsub = con.as_pubsub();
            pubsub.psubscribe(pattern)?;
            pubsub.set_read_timeout(Some(Duration::from_millis(100)))?;
            while !stop.load(Ordering::Relaxed) {
                match pubsub.get_message() {
                    Ok(_) => {
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) if e.is_timeout() => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        })
    });
    if subscriber.is_some() {
        thread::sleep(Duration::from_millis(300)); // let PSUBSCRIBE land
    }

    // As the binary does: the consumer's threads inherit the policy.
    if config.sched_batch {
        chatflow_broker::sched::set_batch()?;
    }
    let started = Instant::now();
    // Wall-clock twins of `started` and `last`, for the JSON's window.
    let started_wall = SystemTime::now();
    let consumer = Consumer::start(config.clone())?;
    let startup = started.elapsed();
    let mut first: Option<Instant> = None;
    let deadline = started + Duration::from_secs(600);
    // The last ack as the 20 ms polls see it.
    let (last, last_wall) = loop {
        let totals = consumer.health().totals;
        if first.is_none() && totals.consumed > 0 {
            first = Some(Instant::now());
        }
        if totals.acked >= n {
            break (Instant::now(), SystemTime::now());
        }
        if Instant::now() > deadline {
            bail!("drain timed out at {} of {n} acked", totals.acked);
        }
        thread::sleep(Duration::from_millis(20));
    };
    let total = last.duration_since(started);
    let draining = first.map_or(total, |f| last.duration_since(f));
    let health = consumer.health();
    consumer.shutdown()?;
    stop.store(true, Ordering::Relaxed);
    if let Some(s) = subscriber {
        s.join().expect("subscriber")?;
    }
    println!(
        "drained {n} in {:.2} s from start ({:.0} msg/s; start-up {:.0} ms; {:.0} msg/s from first delivery)",
        total.as_secs_f64(),
        n as f64 / total.as_secs_f64(),
        startup.as_secs_f64() * 1e3,
        n as f64 / draining.as_secs_f64()
    );
    let l = &health.latency;
    println!(
        "batches {} (size p50 {} max {}), redis pipeline p50 {} us p99 {} us, lag p99 {} ms, redeliveries {}",
        health.totals.batches,
        l.batch_size.p50,
        l.batch_size.max,
        l.redis_publish_us.p50,
        l.redis_publish_us.p99,
        l.lag_ms.p99,
        health.totals.redelivered
    );
    if let Some(db) = &health.database {
        println!(
            "stored {} rows in {} batches (rows p50 {}, max {}), COPY p50 {} us p95 {} us p99 {} us, duplicate batches {}, retries {}",
            db.rows,
            db.batches,
            db.batch_rows.p50,
            db.batch_rows.max,
            db.copy_latency_us.p50,
            db.copy_latency_us.p95,
            db.copy_latency_us.p99,
            db.duplicate_batches,
            db.retries
        );
    }
    if subscribe {
        println!(
            "broadcasts received on Redis: {}",
            received.load(Ordering::Relaxed)
        );
    }
    if let Some(path) = json_path {
        let database = health.database.as_ref().map(|db| {
            json!({
                "rows": db.rows,
                "batches": db.batches,
                "batchRowsP50": db.batch_rows.p50,
                "copyUsP50": db.copy_latency_us.p50,
                "copyUsP99": db.copy_latency_us.p99,
            })
        });
        let report = json!({
            "messages": n,
            "publishPerSecond": n as f64 / publish_secs,
            "seconds": total.as_secs_f64(),
            "startedAtUnixS": unix_s(started_wall),
            "endedAtUnixS": unix_s(last_wall),
            "perSecond": n as f64 / total.as_secs_f64(),
            "perSecondFromFirstDelivery": n as f64 / draining.as_secs_f64(),
            "startupMs": startup.as_secs_f64() * 1e3,
            "redisPipelineUsP50": l.redis_publish_us.p50,
            "redeliveries": health.totals.redelivered,
            "database": database,
        });
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
