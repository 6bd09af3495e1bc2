//! The deliveries a queue consumer holds but has not settled with the
//! broker, and the order in which they may be settled.
//!
//! Delivery tags on a channel increase; `ack(multiple)` settles every
//! outstanding tag up to the one given. So an ack may only cover a run of
//! deliveries that are all finished, and a poison delivery in the middle of
//! a batch must be settled on its own *after* the good ones before it were
//! acked: acking past it first would ack it too, and its `nack` would then
//! name an unknown tag — a channel error that redelivers everything.
//!
//! A delivery is *finished* when the work its ack stands for is done: the
//! broadcast while persistence is off; with persistence, the
//! commit of its row, which writers report back possibly out of order —
//! which is why entries are marked one by one and only the finished prefix
//! is settled. A delivery whose row the database refused becomes poison
//! after the fact, and is rejected at its place in tag order like one that
//! was undecodable from the start.

use std::collections::VecDeque;

/// Anything with an AMQP delivery tag (amiquip's `Delivery`; plain numbers
/// in tests).
pub trait Tagged {
    fn tag(&self) -> u64;
}

impl Tagged for amiquip::Delivery {
    fn tag(&self) -> u64 {
        self.delivery_tag()
    }
}

/// Where an entry stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mark {
    /// Its work (broadcast, commit) is not done yet: nothing at or after
    /// it may be acked.
    Pending,
    /// May be acked.
    Finished,
    /// Undecodable, or its row refused by the database: to be rejected
    /// without requeue (→ dead-letter queue).
    Poison,
}

/// One broker call, in the order they must be made.
#[derive(Debug, PartialEq, Eq)]
pub enum Settle<D> {
    /// `ack(multiple)` on this delivery: settles `count` deliveries.
    AckUpTo { delivery: D, count: usize },
    /// `nack(requeue = false)` on this one delivery.
    Reject(D),
}

/// Unsettled deliveries in tag order.
#[derive(Debug)]
pub struct InHand<D> {
    entries: VecDeque<(D, Mark)>,
}

impl<D> Default for InHand<D> {
    fn default() -> Self {
        InHand {
            entries: VecDeque::new(),
        }
    }
}

impl<D: Tagged> InHand<D> {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Takes a delivery; tags must arrive in increasing order (they do, on
    /// one channel).
    pub fn push(&mut self, delivery: D, mark: Mark) {
        debug_assert!(self
            .entries
            .back()
            .is_none_or(|(d, _)| d.tag() < delivery.tag()));
        self.entries.push_back((delivery, mark));
    }

    /// Marks the delivery with `tag` finished; false if it is not held
    /// (already settled, or from an earlier channel).
    pub fn finish(&mut self, tag: u64) -> bool {
        match self.entries.binary_search_by_key(&tag, |(d, _)| d.tag()) {
            Ok(i) if self.entries[i].1 == Mark::Pending => {
                self.entries[i].1 = Mark::Finished;
                true
            }
            _ => false,
        }
    }

    /// Marks the pending delivery with `tag` poison (its row was refused);
    /// false if it is not held or no longer pending. It is rejected once
    /// everything before it is settled, like an undecodable one.
    pub fn reject(&mut self, tag: u64) -> bool {
        match self.entries.binary_search_by_key(&tag, |(d, _)| d.tag()) {
            Ok(i) if self.entries[i].1 == Mark::Pending => {
                self.entries[i].1 = Mark::Poison;
                true
            }
            _ => false,
        }
    }

    /// Removes the settleable prefix and says how to settle it: runs of
    /// finished deliveries become one multiple-ack each, every poison one a
    /// reject, in tag order; the first pending delivery stops the walk.
    pub fn settle(&mut self) -> Vec<Settle<D>> {
        let mut plan = Vec::new();
        let mut run: Option<(D, usize)> = None;
        while let Some((_, mark)) = self.entries.front() {
            let mark = *mark;
            if mark == Mark::Pending {
                break;
            }
            let Some((delivery, _)) = self.entries.pop_front() else {
                break;
            };
            match mark {
                Mark::Finished => {
                    let count = run.take().map_or(0, |(_, n)| n);
                    run = Some((delivery, count + 1));
                }
                Mark::Poison => {
                    if let Some((delivery, count)) = run.take() {
                        plan.push(Settle::AckUpTo { delivery, count });
                    }
                    plan.push(Settle::Reject(delivery));
                }
                Mark::Pending => unreachable!("checked above"),
            }
        }
        if let Some((delivery, count)) = run {
            plan.push(Settle::AckUpTo { delivery, count });
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Tagged for u64 {
        fn tag(&self) -> u64 {
            *self
        }
    }

    fn hand(marks: &[Mark]) -> InHand<u64> {
        let mut h = InHand::default();
        for (i, m) in marks.iter().enumerate() {
            h.push(i as u64 + 1, *m);
        }
        h
    }

    use Mark::{Finished as F, Pending as P, Poison as X};

    #[test]
    fn a_finished_batch_is_one_multiple_ack() {
        let mut h = hand(&[F, F, F]);
        assert_eq!(
            h.settle(),
            vec![Settle::AckUpTo {
                delivery: 3,
                count: 3
            }]
        );
        assert!(h.is_empty());
    }

    #[test]
    fn poison_splits_the_acks_around_it() {
        let mut h = hand(&[F, F, X, F, X, X, F]);
        assert_eq!(
            h.settle(),
            vec![
                Settle::AckUpTo {
                    delivery: 2,
                    count: 2
                },
                Settle::Reject(3),
                Settle::AckUpTo {
                    delivery: 4,
                    count: 1
                },
                Settle::Reject(5),
                Settle::Reject(6),
                Settle::AckUpTo {
                    delivery: 7,
                    count: 1
                },
            ]
        );
        assert!(h.is_empty());
    }

    #[test]
    fn nothing_at_or_after_a_pending_delivery_is_settled() {
        let mut h = hand(&[F, P, P, X]);
        assert_eq!(
            h.settle(),
            vec![Settle::AckUpTo {
                delivery: 1,
                count: 1
            }]
        );
        assert_eq!(h.len(), 3);
        assert_eq!(h.settle(), vec![]);
        // Commits reported out of order: 3 then 2.
        assert!(h.finish(3));
        assert_eq!(h.settle(), vec![]);
        assert!(h.finish(2));
        assert!(!h.finish(2), "already finished");
        assert!(!h.finish(99), "never held");
        assert_eq!(
            h.settle(),
            vec![
                Settle::AckUpTo {
                    delivery: 3,
                    count: 2
                },
                Settle::Reject(4)
            ]
        );
    }

    #[test]
    fn a_refused_row_is_rejected_at_its_place_in_tag_order() {
        let mut h = hand(&[P, P, P, P]);
        // The writer commits 1 and 4 and refuses 2; 3 is still being written.
        assert!(h.finish(1));
        assert!(h.reject(2));
        assert!(h.finish(4));
        assert!(!h.reject(4), "finished: no longer pending");
        assert!(!h.reject(99), "never held");
        assert_eq!(
            h.settle(),
            vec![
                Settle::AckUpTo {
                    delivery: 1,
                    count: 1
                },
                Settle::Reject(2)
            ]
        );
        // The ack of 4 waits for 3, and never covers the rejected 2.
        assert!(h.finish(3));
        assert_eq!(
            h.settle(),
            vec![Settle::AckUpTo {
                delivery: 4,
                count: 2
            }]
        );
        assert!(h.is_empty());
    }
}
