//! Starting and stopping a server: worker threads (pinned, each with its own
//! Poll and `SO_REUSEPORT` listener), the broker, and an orderly shutdown.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use anyhow::{anyhow, Context as _};
use crossbeam_channel::bounded;
use mio::{Poll, Waker};
use socket2::{Domain, Protocol, Socket, Type};

use crate::broker::{self, Broker, BrokerFactory, BrokerHealth};
use crate::config::Config;
use crate::fanout::{inbox, Fanout, Inbox, WorkerHandle};
use crate::stats::{Health, Shared};
use crate::worker::{Worker, WAKER};

/// Pending connections the kernel queues per listener before `accept`.
const LISTEN_BACKLOG: i32 = 4096;

/// A running server. Dropping it without [`Server::shutdown`] leaves the
/// threads running until the process exits.
pub struct Server {
    local_addr: SocketAddr,
    fanout: Fanout,
    broker: Arc<dyn Broker>,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Server {
    /// Starts the workers and the broker the configuration names.
    pub fn start(config: Config) -> anyhow::Result<Server> {
        Self::start_with(config, Box::new(broker::build))
    }

    /// Starts the workers with a broker of the caller's making (tests).
    pub fn start_with(config: Config, make_broker: BrokerFactory<'_>) -> anyhow::Result<Server> {
        if !config.share_port && config.bind.port() != 0 {
            refuse_if_taken(config.bind)?;
        }
        let shared = Arc::new(Shared::new(config.clone()));
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let mut bind = config.bind;
        let mut handles = Vec::with_capacity(config.workers);
        let mut go_senders = Vec::with_capacity(config.workers);
        let mut threads = Vec::with_capacity(config.workers);
        // Workers start one by one: the first binds (port 0 picks the port),
        // the rest join that port.
        for index in 0..config.workers {
            let core = if config.pin_workers && !cores.is_empty() {
                Some(cores[index % cores.len()])
            } else {
                None
            };
            let (ready_tx, ready_rx) = bounded(1);
            let (go_tx, go_rx) = bounded::<Option<Arc<dyn Broker>>>(1);
            let shared = shared.clone();
            let thread = thread::Builder::new()
                .name(format!("worker-{index}"))
                .spawn(move || {
                    // Pin first, so the Poll, buffers and slab are allocated
                    // on the worker's own core's memory.
                    if let Some(core) = core {
                        core_affinity::set_for_current(core);
                    }
                    let prepared = prepare(bind);
                    let (poll, listener, inbox) = match prepared {
                        Ok((poll, listener, handle, inbox, addr)) => {
                            let _ = ready_tx.send(Ok((handle, addr)));
                            (poll, listener, inbox)
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let Ok(Some(broker)) = go_rx.recv() else {
                        return;
                    };
                    let worker = match Worker::new(index, poll, listener, inbox, shared, broker) {
                        Ok(worker) => worker,
                        Err(e) => {
                            eprintln!("worker-{index}: cannot start: {e}");
                            return;
                        }
                    };
                    if let Err(e) = worker.run() {
                        eprintln!("worker-{index}: event loop failed: {e}");
                    }
                })
                .context("spawning a worker thread")?;
            threads.push(thread);
            go_senders.push(go_tx);
            match ready_rx.recv() {
                Ok(Ok((handle, addr))) => {
                    handles.push(handle);
                    bind = addr;
                }
                Ok(Err(e)) => {
                    drop(go_senders);
                    for t in threads {
                        let _ = t.join();
                    }
                    return Err(e)
                        .with_context(|| format!("worker-{index} could not listen on {bind}"));
                }
                Err(_) => return Err(anyhow!("worker-{index} exited during start-up")),
            }
        }
        let fanout = Fanout::new(handles);
        let broker = match make_broker(&config, fanout.clone()) {
            Ok(broker) => broker,
            Err(e) => {
                drop(go_senders);
                for t in threads {
                    let _ = t.join();
                }
                return Err(e.context(format!("starting the {} broker", config.broker.as_str())));
            }
        };
        for go in go_senders {
            let _ = go.send(Some(broker.clone()));
        }
        Ok(Server {
            local_addr: bind,
            fanout,
            broker,
            shared,
            threads,
        })
    }

    /// The address the workers listen on (with the real port when the
    /// configured one was 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The same document `GET /health` serves.
    pub fn health(&self) -> Health {
        let broker: BrokerHealth = self.broker.health();
        self.shared.health(&broker, self.broker.kind().as_str())
    }

    /// Stops accepting, closes every connection with 1001 (waiting up to
    /// the configured grace for clients to answer), joins every worker, then
    /// stops the broker.
    pub fn shutdown(self) -> anyhow::Result<()> {
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        self.fanout.shutdown();
        let mut panicked = 0;
        for thread in self.threads {
            if thread.join().is_err() {
                panicked += 1;
            }
        }
        self.broker.shutdown();
        if panicked > 0 {
            return Err(anyhow!("{panicked} worker thread(s) panicked"));
        }
        Ok(())
    }
}

type Prepared = (Poll, mio::net::TcpListener, WorkerHandle, Inbox, SocketAddr);

/// The per-worker resources made on the worker's own (pinned) thread.
fn prepare(bind: SocketAddr) -> anyhow::Result<Prepared> {
    let poll = Poll::new().context("creating the worker's Poll")?;
    let waker = Waker::new(poll.registry(), WAKER).context("creating the worker's Waker")?;
    let (handle, inbox) = inbox(waker);
    let listener = reuseport_listener(bind)?;
    let addr = listener.local_addr()?;
    Ok((poll, listener, handle, inbox, addr))
}

/// Fails if another socket already listens on `addr`. The workers' own
/// listeners use `SO_REUSEPORT`, which lets a second process (any process
/// of the same user) bind the same address and silently take a share of
/// new connections; a plain bind cannot join a reuseport group, so it
/// fails exactly when someone already listens there. (An address freed in
/// the instant between this probe and the workers' binds is harmless.)
fn refuse_if_taken(addr: SocketAddr) -> anyhow::Result<()> {
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // Connections in TIME_WAIT from an earlier run do not count as taken.
    probe.set_reuse_address(true)?;
    match probe.bind(&addr.into()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(anyhow!(
            "{addr} is already in use by another process; stop it, pick another --bind, or pass --share-port to share the port with it on purpose"
        )),
        Err(e) => Err(e).with_context(|| format!("binding {addr}")),
    }
}

/// A non-blocking listener that shares its port with the other workers'
/// (the kernel spreads new connections across them by 4-tuple hash).
fn reuseport_listener(addr: SocketAddr) -> anyhow::Result<mio::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket
        .bind(&addr.into())
        .with_context(|| format!("binding {addr}"))?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(mio::net::TcpListener::from_std(socket.into()))
}
