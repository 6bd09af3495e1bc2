//! How the client's threads start and where they run: named threads with
//! small stacks, SCHED_BATCH for the threads that work while the
//! measurement runs (generator, senders, CSV writer), and a sender pinned to
//! the CPU its connection's packets arrive on.
//!
//! It depends on nothing in the crate but the error type, so every module
//! that starts or places a thread can use it without importing another's
//! internals.

use std::thread::JoinHandle;

use crate::error::{Error, Result};

/// Senders keep little on the stack; 256 KiB instead of 2 MiB keeps a
/// thousand threads cheap.
const STACK_SIZE: usize = 256 * 1024;

/// Starts a thread named `name` (as `top -H` and perf show it) that first
/// moves itself to SCHED_BATCH if `sched_batch`, then runs `f`.
pub fn spawn<T: Send + 'static>(
    name: &str,
    sched_batch: bool,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<JoinHandle<T>> {
    std::thread::Builder::new()
        .name(name.to_string())
        .stack_size(STACK_SIZE)
        .spawn(move || {
            if sched_batch {
                set_sched_batch();
            }
            f()
        })
        .map_err(|source| Error::Spawn {
            name: name.to_string(),
            source,
        })
}

/// [`spawn`] inside a scope, for threads that borrow the caller's state
/// (and are joined before it returns).
pub fn spawn_scoped<'scope, 'env, T: Send + 'scope>(
    scope: &'scope std::thread::Scope<'scope, 'env>,
    name: &str,
    sched_batch: bool,
    f: impl FnOnce() -> T + Send + 'scope,
) -> Result<std::thread::ScopedJoinHandle<'scope, T>> {
    std::thread::Builder::new()
        .name(name.to_string())
        .stack_size(STACK_SIZE)
        .spawn_scoped(scope, move || {
            if sched_batch {
                set_sched_batch();
            }
            f()
        })
        .map_err(|source| Error::Spawn {
            name: name.to_string(),
            source,
        })
}

/// Moves the calling thread to SCHED_BATCH (see
/// [`Config::sched_batch`](crate::Config::sched_batch)). Best effort: on
/// failure the thread keeps the normal policy.
pub fn set_sched_batch() {
    let _ = chatflow_broker::sched::set_batch();
}

/// Pins the calling thread to CPU `cpu`. Best effort: false if the CPU is
/// not one this process may use (or not on Linux).
pub fn pin_to(cpu: usize) -> bool {
    #[cfg(target_os = "linux")]
    {
        // core_affinity puts the id into a fixed-size cpu_set_t and would
        // panic past its CPU_SETSIZE (1024) bits: no such CPU can be used.
        cpu < libc::CPU_SETSIZE as usize
            && core_affinity::set_for_current(core_affinity::CoreId { id: cpu })
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = cpu;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spawned_thread_has_its_name_and_a_pin_is_best_effort() {
        // The name reaches the OS thread; an impossible CPU is refused, not a panic.
        let h = spawn("threads-test", false, || {
            let name = std::thread::current().name().map(str::to_string);
            (name, pin_to(usize::MAX), pin_to(1 << 20))
        })
        .unwrap();
        assert_eq!(
            h.join().unwrap(),
            (Some("threads-test".to_string()), false, false)
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_thread_can_be_pinned_to_a_cpu_it_may_use() {
        // The first CPU of this process's set is accepted.
        let cpu = core_affinity::get_core_ids().unwrap()[0].id;
        let pinned = spawn("threads-pin", true, move || pin_to(cpu)).unwrap();
        assert!(pinned.join().unwrap());
    }
}
