//! Samples RabbitMQ queue depth while a load runs: every `--interval` it
//! asks for each (room, shard) queue's ready-message count (a passive
//! declare: cheap, unlike spawning `rabbitmqctl`), and prints one line per
//! sample plus a summary at the end (max and mean of the total).
//!
//! ```text
//! cargo run --release -p chatflow-consumer --example queue_depth -- --seconds 120
//! ```

use std::time::{Duration, Instant};

use anyhow::Context;
use chatflow_protocol::{Rooms, Topology};
use clap::Parser;

#[derive(Debug, Parser)]
struct Args {
    /// Namespace of the queues.
    #[arg(long, env = "NAMESPACE", default_value = "chatflow")]
    namespace: String,
    #[arg(long, env = "ROOMS", default_value_t = 20)]
    rooms: u32,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 60.0)]
    seconds: f64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 2.0)]
    interval: f64,
    #[arg(long, env = "RABBITMQ_HOST", default_value = "127.0.0.1")]
    rabbitmq_host: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let topology = Topology::new(
        args.namespace.clone(),
        Rooms::new(args.rooms).map_err(anyhow::Error::msg)?,
    );
    let url = format!("amqp://guest:guest@{}:5672/%2f", args.rabbitmq_host);
    let mut connection = amiquip::Connection::insecure_open(&url).context("RabbitMQ")?;
    let channel = connection.open_channel(None)?;
    let started = Instant::now();
    let (mut samples, mut sum, mut max) = (0u64, 0u64, 0u64);
    while started.elapsed().as_secs_f64() < args.seconds {
        let tick = Instant::now();
        let mut total = 0u64;
        let mut deepest = 0u64;
        for (room, shard) in topology.shards() {
            if let Ok(queue) = channel.queue_declare_passive(topology.queue(room, shard)) {
                let depth = u64::from(queue.declared_message_count().unwrap_or(0));
                total += depth;
                deepest = deepest.max(depth);
            }
        }
        println!(
            "t={:6.1}s ready={total} deepest_queue={deepest}",
            started.elapsed().as_secs_f64()
        );
        samples += 1;
        sum += total;
        max = max.max(total);
        std::thread::sleep(Duration::from_secs_f64(args.interval).saturating_sub(tick.elapsed()));
    }
    println!(
        "queue depth over {samples} samples: mean {:.0}, max {max} ready messages (all queues)",
        sum as f64 / samples.max(1) as f64
    );
    channel.close()?;
    connection.close()?;
    Ok(())
}
