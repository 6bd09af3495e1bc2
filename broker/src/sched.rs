//! The scheduling policy of ChatFlow's threads: SCHED_BATCH, set once on
//! the thread that starts a process's work so that every thread it starts
//! afterwards (workers, publishers, consumers, writers, and the I/O threads
//! amiquip and r2d2 start on our behalf) inherits it.
//!
//! Why: on Linux a thread woken under SCHED_OTHER may preempt the one
//! running; under SCHED_BATCH it waits for the running one's slice or its
//! next sleep. The weight, and so the CPU share, is the same. On a box
//! where RabbitMQ, Redis, PostgreSQL, the server, the consumer and the
//! client share two cores, every message wakes a dozen threads, and
//! preempting on each wake-up costs more context switches than the work
//! itself; batch threads find several messages waiting per wake-up instead
//! of one. README "Performance" has the measurement; `--no-sched-batch`
//! turns it off.

use std::io;

/// Moves the calling thread to SCHED_BATCH; threads it starts afterwards
/// inherit the policy. A no-op off Linux.
pub fn set_batch() -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: a plain syscall on the calling thread (pid 0) with a
        // valid, initialised parameter struct that outlives the call. No
        // safe wrapper exists in the workspace's dependencies (std,
        // core_affinity and socket2 have none for scheduling policies).
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the calling thread runs under SCHED_BATCH (false off Linux).
    fn is_batch() -> bool {
        #[cfg(target_os = "linux")]
        {
            // SAFETY: no arguments but the calling thread's id (0).
            unsafe { libc::sched_getscheduler(0) == libc::SCHED_BATCH }
        }
        #[cfg(not(target_os = "linux"))]
        {
            false
        }
    }

    #[test]
    fn threads_started_after_set_batch_inherit_it() {
        // (Run under `chrt -b` the harness is batch already: then only the
        // inheritance is shown.)
        let harness = is_batch();
        // In a thread of its own, so the test harness keeps its policy.
        std::thread::spawn(move || {
            assert_eq!(is_batch(), harness, "a new thread has its parent's policy");
            set_batch().expect("SCHED_BATCH needs no privilege");
            assert!(is_batch());
            let child = std::thread::spawn(is_batch).join().unwrap();
            assert!(child, "a thread started afterwards inherits SCHED_BATCH");
        })
        .join()
        .unwrap();
        assert_eq!(is_batch(), harness, "the calling thread is unchanged");
    }
}
