//! The process's descriptor limit. A test that holds thousands of sockets
//! holds both ends of each (client and server run in one process), and the
//! usual soft limit of 1024 is far below that.

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the soft
/// limit now in force (a test skips itself or fails when it is too low).
pub fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write `limit`, a live,
    // initialised struct of the type they expect.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        }
    }
    limit.rlim_cur
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_soft_limit_reaches_the_hard_one() {
        let raised = super::raise_fd_limit();
        assert!(raised >= 1024, "{raised}");
        assert_eq!(raised, super::raise_fd_limit(), "a second call is a no-op");
    }
}
