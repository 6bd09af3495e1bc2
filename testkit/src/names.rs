//! Names no other test, test binary or run on the machine uses: a test's
//! exchange, queues, Redis channels and database all carry its namespace,
//! so parallel tests (and other people's runs) never see each other's
//! messages.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The longest namespace the topology accepts (`chatflow-broker`'s rule).
const MAX_LEN: usize = 64;

/// `test-{tag}-{pid}-{nanos}-{n}`: the process id separates concurrent
/// test binaries, the clock separates runs, the counter separates the tests
/// of one binary. `tag` says which test made it (when one is left behind).
pub fn unique_namespace(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let namespace = format!(
        "test-{tag}-{}-{nanos}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    assert!(
        namespace.len() <= MAX_LEN
            && namespace
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "tag {tag:?} makes {namespace:?}, not a valid namespace"
    );
    namespace
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_calls_never_collide() {
        assert_ne!(unique_namespace("a"), unique_namespace("a"));
        assert!(unique_namespace("redis-restart").starts_with("test-redis-restart-"));
    }

    #[test]
    #[should_panic(expected = "not a valid namespace")]
    fn a_tag_the_topology_would_refuse_panics() {
        unique_namespace("a.b");
    }
}
