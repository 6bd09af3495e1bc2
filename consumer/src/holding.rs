//! What a queue consumer knows of its standing on its queue ([`Holding`]),
//! kept in its [`QueueStats`](crate::counters::QueueStats) for `/health`,
//! `/metrics` and the owner advert.
//!
//! AMQP 0.9.1 never tells a consumer that single-active-consumer made it
//! the active one (RabbitMQ only shows it in `rabbitmqctl list_consumers`),
//! so the one honest signal is a delivery: a registration is
//! [`Holding::Active`] from the first delivery it receives, and
//! [`Holding::Waiting`] before that — which is either a standby behind the
//! active consumer, or the active consumer of a queue that has had nothing
//! to deliver since. Once active, a registration stays active until it
//! ends: RabbitMQ moves the queue on only when the active consumer
//! cancels or its channel goes, and either ends the registration here too.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, now.
pub fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// One `basic.consume` on one channel, from its consume-ok to the end of
/// the channel.
#[derive(Clone, Debug)]
pub struct Registration {
    /// The consumer tag the broker gave it (what `rabbitmqctl
    /// list_consumers` shows).
    pub tag: String,
    /// When it was made, Unix ms (what an owner advertises, and what a
    /// standby compares with it: see `owners`).
    pub at_ms: i64,
    /// The queue's `consumed` counter when it was made: deliveries since
    /// are this registration's.
    pub consumed_before: u64,
}

/// A queue consumer's standing on its queue.
#[derive(Clone, Debug)]
pub enum Holding {
    /// A standby in its start-up delay: it registers at `until_ms`.
    Delayed { until_ms: i64 },
    /// Not registered: no channel yet, between channels, or handing the
    /// queue back.
    Unregistered { since_ms: i64 },
    /// Registered, nothing delivered on this registration yet.
    Waiting {
        since_ms: i64,
        registration: Registration,
    },
    /// Registered and delivered to: the queue's single active consumer.
    Active {
        since_ms: i64,
        registration: Registration,
    },
}

impl Default for Holding {
    fn default() -> Self {
        Holding::Unregistered {
            since_ms: unix_ms(),
        }
    }
}

/// The role names `/health` and `/metrics` use, in the order they list
/// them.
pub const ROLES: [&str; 4] = ["active", "waiting", "unregistered", "delayed"];

impl Holding {
    pub fn role(&self) -> &'static str {
        match self {
            Holding::Active { .. } => "active",
            Holding::Waiting { .. } => "waiting",
            Holding::Unregistered { .. } => "unregistered",
            Holding::Delayed { .. } => "delayed",
        }
    }

    /// Since when (Unix ms) it has been in this state; for `Delayed`, when
    /// the delay ends.
    pub fn since_ms(&self) -> i64 {
        match self {
            Holding::Delayed { until_ms } => *until_ms,
            Holding::Unregistered { since_ms }
            | Holding::Waiting { since_ms, .. }
            | Holding::Active { since_ms, .. } => *since_ms,
        }
    }

    /// The live registration, if any.
    pub fn registration(&self) -> Option<&Registration> {
        match self {
            Holding::Waiting { registration, .. } | Holding::Active { registration, .. } => {
                Some(registration)
            }
            Holding::Delayed { .. } | Holding::Unregistered { .. } => None,
        }
    }

    pub fn is_active(&self) -> bool {
        matches!(self, Holding::Active { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_and_registrations() {
        let registration = Registration {
            tag: "amq.ctag-1".to_string(),
            at_ms: 1,
            consumed_before: 7,
        };
        let waiting = Holding::Waiting {
            since_ms: 10,
            registration: registration.clone(),
        };
        assert_eq!((waiting.role(), waiting.since_ms()), ("waiting", 10));
        assert_eq!(waiting.registration().unwrap().at_ms, 1);
        assert!(!waiting.is_active());
        let active = Holding::Active {
            since_ms: 12,
            registration,
        };
        assert!(active.is_active());
        assert_eq!(Holding::Delayed { until_ms: 99 }.since_ms(), 99);
        assert!(Holding::default().registration().is_none());
        for holding in [active, waiting, Holding::default()] {
            assert!(ROLES.contains(&holding.role()));
        }
    }
}
