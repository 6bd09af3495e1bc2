//! What the RabbitMQ publishers measure for `/metrics`: each message's ack
//! latency (accepted on a worker → its confirm back at the publisher), the
//! broker's confirm latency (`basic.publish` → confirm), the sent log's
//! claim round trip (idempotent sends), and how many messages are in
//! flight. One per publisher, written by its thread and its claim stage
//! ([`super::claimer`], the claim round trip); read by scrapes.

use std::sync::atomic::{AtomicU64, Ordering};

use chatflow_telemetry::histogram::LATENCY_SECONDS;
use chatflow_telemetry::{Histogram, HistogramSnapshot};

#[derive(Debug)]
pub struct PublishMetrics {
    pub ack_latency: Histogram,
    pub confirm_latency: Histogram,
    /// One Redis round trip per burst of named messages.
    pub claim_latency: Histogram,
    /// Published, not yet confirmed (or failed).
    pub in_flight: AtomicU64,
    /// Messages answered with a timeout: no confirm within `confirm_timeout`.
    pub confirms_overdue: AtomicU64,
    /// Channels reopened after a nack.
    pub channel_reopens: AtomicU64,
}

impl Default for PublishMetrics {
    fn default() -> Self {
        PublishMetrics {
            ack_latency: Histogram::seconds(LATENCY_SECONDS),
            confirm_latency: Histogram::seconds(LATENCY_SECONDS),
            claim_latency: Histogram::seconds(LATENCY_SECONDS),
            in_flight: AtomicU64::new(0),
            confirms_overdue: AtomicU64::new(0),
            channel_reopens: AtomicU64::new(0),
        }
    }
}

impl PublishMetrics {
    pub fn set_in_flight(&self, n: usize) {
        self.in_flight.store(n as u64, Ordering::Relaxed);
    }
}

/// Every publisher's measurements, read by one scrape.
#[derive(Debug, Clone)]
pub struct PublishingSnapshot {
    pub ack_latency: HistogramSnapshot,
    pub confirm_latency: HistogramSnapshot,
    pub claim_latency: HistogramSnapshot,
    /// Per publisher: (in flight, waiting in its queue, link up).
    pub publishers: Vec<PublisherGauges>,
}

#[derive(Debug, Clone, Copy)]
pub struct PublisherGauges {
    pub in_flight: u64,
    pub queued: usize,
    pub up: bool,
    pub confirms_overdue: u64,
    pub channel_reopens: u64,
}

impl PublishingSnapshot {
    pub fn empty() -> Self {
        PublishingSnapshot {
            ack_latency: HistogramSnapshot::empty(LATENCY_SECONDS),
            confirm_latency: HistogramSnapshot::empty(LATENCY_SECONDS),
            claim_latency: HistogramSnapshot::empty(LATENCY_SECONDS),
            publishers: Vec::new(),
        }
    }

    pub fn add(&mut self, m: &PublishMetrics, queued: usize, up: bool) {
        self.ack_latency.add(&m.ack_latency.snapshot());
        self.confirm_latency.add(&m.confirm_latency.snapshot());
        self.claim_latency.add(&m.claim_latency.snapshot());
        self.publishers.push(PublisherGauges {
            in_flight: m.in_flight.load(Ordering::Relaxed),
            queued,
            up,
            confirms_overdue: m.confirms_overdue.load(Ordering::Relaxed),
            channel_reopens: m.channel_reopens.load(Ordering::Relaxed),
        });
    }
}
