//! A server at the descriptor limit. The limit is the process's, so this
//! binary holds this one test: it lowers its own soft `RLIMIT_NOFILE`,
//! which no other test may share.

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::Duration;

use chatflow_server::BrokerKind;
use common::*;
use socket2::{Domain, Socket, Type};

/// Clients that connect while every descriptor is taken wait in the
/// accept queue (the worker's `accept` fails with EMFILE, counted in
/// `acceptFailures`); once descriptors are freed they are accepted and
/// answered without any new connection arriving to wake the listener.
#[test]
fn the_accept_queue_recovers_when_descriptors_free_up() {
    let server = start(BrokerKind::Memory);
    let addr = server.local_addr();
    assert_eq!(health(addr)["totals"]["acceptFailures"], 0);
    let original = nofile();
    // Room for what this process holds now and a few dozen more: filling
    // them up is then quick.
    let open = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
    let lowered = open + 64;
    assert!(
        lowered <= original.rlim_cur,
        "{open} descriptors open already"
    );
    set_nofile(lowered, original.rlim_max);
    let _restore = Restore(original);

    // The clients' sockets first (a connect takes no descriptor of its
    // own), then every descriptor left: the server has none to accept with.
    let sockets: Vec<Socket> = (0..3)
        .map(|_| Socket::new(Domain::IPV4, Type::STREAM, None).unwrap())
        .collect();
    let filler: Vec<File> = std::iter::from_fn(|| File::open("/dev/null").ok()).collect();
    assert!(
        File::open("/dev/null").is_err(),
        "every descriptor is taken"
    );
    let mut clients: Vec<TcpStream> = sockets
        .into_iter()
        .map(|socket| {
            socket
                .connect(&addr.into())
                .expect("the kernel completes the connect");
            socket.into()
        })
        .collect();
    for client in &mut clients {
        // Queued in the kernel until the server reads it.
        client
            .write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
    }
    eventually("the workers hit the limit", || {
        server.health().totals.accept_failures > 0
    });
    // Longer than the workers' retry, so each has failed again since the
    // connections' arrival, and no event of theirs is left to act on.
    thread::sleep(Duration::from_millis(300));

    drop(filler);
    for mut client in clients {
        client.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut answer = String::new();
        client
            .read_to_string(&mut answer)
            .expect("answered once descriptors are free");
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer:?}");
    }
    let totals = health(addr)["totals"].clone();
    assert!(totals["acceptFailures"].as_u64().unwrap() > 0, "{totals}");
    server.shutdown().unwrap();
}

fn nofile() -> libc::rlimit {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only into `limit`.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
        0
    );
    limit
}

fn set_nofile(soft: u64, hard: u64) {
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads only `limit`.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
}

/// Puts the original limit back, pass or fail.
struct Restore(libc::rlimit);

impl Drop for Restore {
    fn drop(&mut self) {
        set_nofile(self.0.rlim_cur, self.0.rlim_max);
    }
}
