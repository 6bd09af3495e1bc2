//! Starting and stopping a server: worker threads (pinned, each with its own
//! Poll and `SO_REUSEPORT` listener), the broker, and an orderly shutdown.
//!
//! # Stopping
//!
//! One primitive, `chatflow_broker`'s [`ShutdownTrigger`] /
//! [`Shutdown`](chatflow_broker::Shutdown) pair, signals every stop; this is the one place that says in which
//! order. [`Server::shutdown`] (the binary calls it on SIGTERM or SIGINT):
//!
//! 1. drains: [`Shared::start_draining`] turns `/health` to 503
//!    (`draining`) at once, and for `drain` (`--drain-secs`, 10 s; 0 in
//!    a library's default) the server goes on serving as before —
//!    upgrades, messages, acks, broadcasts, the read API — so a load
//!    balancer takes it out of rotation while its clients are still
//!    served. [`Server::shutdown_hurried_by`] cuts this wait short (the
//!    binary: a second signal);
//! 2. stops the read API (its threads finish the request at hand, then
//!    its port closes): it shares nothing with the workers; then signals
//!    the server's trigger. From then on [`Shared::is_stopping`] holds:
//!    new WebSocket upgrades get a 503 and `/health` says
//!    `shutting_down` (still 503: the listeners stay open until the
//!    workers exit, so a balancer's check gets an answer, never
//!    "connection refused");
//! 3. wakes every worker with [`WorkerEvent::Shutdown`] through its inbox
//!    (a mio loop sleeps in `epoll_wait`, so its `Waker` is how any signal
//!    reaches it). A worker refuses new messages (`UNAVAILABLE`: never
//!    sent, so a retry elsewhere cannot duplicate them), waits for the
//!    broker's answers to the ones in flight (bounded by
//!    `confirm_timeout`) and delivers them, acks first, then closes its
//!    WebSockets with 1001 and exits when they are gone or the grace
//!    period (`shutdown_grace`) ends;
//! 4. joins the workers, then calls [`Broker::shutdown`], which signals the
//!    broker's own trigger: publishers stop taking messages, wait (bounded)
//!    for any confirm still out, and exit; the Redis subscriber exits. The
//!    broker stops after the workers because answers to messages published
//!    before the stop must still reach them in step 3. Then presence stops
//!    (its threads have the workers' last disconnects by then; what it
//!    shared in Redis expires by itself, see [`crate::presence`]);
//! 5. joins the read side's threads: `fleet-stats` (which withdrew this
//!    server's snapshot from Redis at the signal of step 2, so the fleet
//!    view drops it at once) and `queue-depths`.
//!
//! A broker's trigger dropped without a signal (a start that fails half-way)
//! stops its threads the same way.
//!
//! A worker thread that ends early (a panic, a failed Poll) is marked dead
//! at once ([`Shared::worker_died`]): `/health` lists it and says
//! `degraded`.
//!
//! [`WorkerEvent::Shutdown`]: crate::fanout::WorkerEvent::Shutdown

use std::mem::ManuallyDrop;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use anyhow::{anyhow, Context as _};
use chatflow_broker::retry::wait;
use chatflow_broker::{shutdown_signal, Shutdown, ShutdownTrigger};
use crossbeam_channel::bounded;
use mio::{Poll, Waker};
use socket2::{Domain, Protocol, Socket, Type};

use crate::api::replica::ReplicaMonitor;
use crate::api::{Api, ApiContext};
use crate::broker::memory::MemoryBroker;
use crate::broker::none::NoBroker;
use crate::broker::rabbitmq::RabbitBroker;
use crate::broker::{Broker, BrokerFactory};
use crate::config::{BrokerKind, Config, TcpKeepalive};
use crate::fanout::{inbox, Fanout, Inbox, WorkerHandle};
use crate::fleet::{FleetReader, QueueDepths, StatsPublisher};
use crate::live::FleetLive;
use crate::metrics::ServerMetrics;
use crate::presence::service::Pending;
use crate::presence::{Outbox, Presence, PresenceHandle};
use crate::stats::{Health, Shared};
use crate::worker::{Worker, WAKER};

/// A running server. Dropping it without [`Server::shutdown`] leaves the
/// threads running until the process exits.
pub struct Server {
    local_addr: SocketAddr,
    fanout: Fanout,
    broker: Arc<dyn Broker>,
    shared: Arc<Shared>,
    /// Step 2 of the stop (see the module docs). Never dropped: a server
    /// dropped without `shutdown` keeps serving, as documented above.
    stop: ManuallyDrop<ShutdownTrigger>,
    threads: Vec<JoinHandle<()>>,
    /// Who is in each room (`None`: `--presence off`).
    presence: Option<Presence>,
    /// The fleet-stats publisher, and the read API with what it reads.
    read_side: ReadSide,
}

/// What serves and feeds the read side: this server's fleet snapshot (a
/// thread, always: `/api/metrics` of any server reads it), and, with the
/// API on, the API and the queue-depth sampler. Each stops on the server's
/// stop signal or, for the API, just before it (step 2 of the shutdown).
struct ReadSide {
    publisher: StatsPublisher,
    queues: Option<Arc<QueueDepths>>,
    replica: Option<Arc<ReplicaMonitor>>,
    api: Option<Api>,
}

impl ReadSide {
    fn start(
        config: &Config,
        shared: &Arc<Shared>,
        broker: &Arc<dyn Broker>,
        presence: Option<PresenceHandle>,
        stopping: &Shutdown,
    ) -> anyhow::Result<ReadSide> {
        let health = {
            let (shared, broker) = (shared.clone(), broker.clone());
            move || shared.health(&*broker)
        };
        let publisher = StatsPublisher::start(config, Box::new(health), stopping.clone())
            .context("starting the fleet-stats thread")?;
        let Some(api_config) = &config.api else {
            return Ok(ReadSide {
                publisher,
                queues: None,
                replica: None,
                api: None,
            });
        };
        let queues = match config.broker {
            BrokerKind::Rabbitmq => Some(Arc::new(
                QueueDepths::start(config, stopping.clone())
                    .context("starting the queue-depths thread")?,
            )),
            BrokerKind::Memory | BrokerKind::None => None,
        };
        let reader = FleetReader::new(config, publisher.latest())
            .context("the fleet reader's Redis settings")?;
        let live = FleetLive {
            reader,
            queues: queues.clone(),
            broker: config.broker,
        };
        let pool = ApiContext::pool(api_config)?;
        let replica = match &api_config.replica {
            Some(replica) => Some(Arc::new(
                ReplicaMonitor::start(pool.clone(), replica.display(), stopping.clone())
                    .context("starting the replica-lag thread")?,
            )),
            None => None,
        };
        let metrics = Arc::new(ServerMetrics::new(
            shared.clone(),
            broker.clone(),
            Some(pool.clone()),
            replica.clone(),
            queues.clone(),
            presence.clone(),
        ));
        let context = ApiContext::new(
            api_config,
            config.rooms(),
            pool,
            replica.clone(),
            Box::new(live),
            metrics,
            presence,
        );
        let api = Api::start(api_config, context)?;
        Ok(ReadSide {
            publisher,
            queues,
            replica,
            api: Some(api),
        })
    }

    /// Step 2 of the stop: the API's threads finish and its port closes.
    fn stop_api(&mut self) {
        if let Some(api) = self.api.take() {
            api.shutdown();
        }
    }

    /// After the stop signal: joins the publisher (which has withdrawn
    /// this server's snapshot) and the queue sampler.
    fn join(mut self) {
        self.stop_api();
        self.publisher.join();
        if let Some(replica) = self.replica.take() {
            replica.join();
        }
        if let Some(queues) = self.queues.take() {
            // The API (the only other holder) is gone: this is the last.
            if let Ok(mut queues) = Arc::try_unwrap(queues) {
                queues.join();
            }
        }
    }
}

impl Server {
    /// Starts the workers and the broker the configuration names.
    pub fn start(config: Config) -> anyhow::Result<Server> {
        Self::start_with(config, Box::new(build_broker))
    }

    /// Starts the workers with a broker of the caller's making (tests).
    pub fn start_with(config: Config, make_broker: BrokerFactory<'_>) -> anyhow::Result<Server> {
        if !config.share_port && config.bind.port() != 0 {
            refuse_if_taken(config.bind)?;
        }
        let (stop, stopping) = shutdown_signal();
        let shared = Arc::new(Shared::new(config.clone(), stopping.clone()));
        // Its channel first: each worker gets an outbox on it.
        let pending_presence = Pending::new(&config);
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let mut bind = config.bind;
        let keepalive = config.liveness.tcp_keepalive;
        let backlog = config.listen_backlog;
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
            let (go_tx, go_rx) = bounded::<Option<(Arc<dyn Broker>, Option<Outbox>)>>(1);
            let shared = shared.clone();
            let thread = thread::Builder::new()
                .name(format!("worker-{index}"))
                .spawn(move || {
                    // Pin first, so the Poll, buffers and slab are allocated
                    // on the worker's own core's memory.
                    if let Some(core) = core {
                        core_affinity::set_for_current(core);
                    }
                    let prepared = prepare(bind, keepalive, backlog);
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
                    let Ok(Some((broker, presence))) = go_rx.recv() else {
                        return;
                    };
                    // From here on, any way out but a clean stop (an error
                    // below, or a panic unwinding through) marks it dead.
                    let mut watch = DeathWatch {
                        shared: shared.clone(),
                        index,
                        armed: true,
                    };
                    let made = Worker::new(index, poll, listener, inbox, shared, broker, presence);
                    let worker = match made {
                        Ok(worker) => worker,
                        Err(e) => {
                            tracing::error!("worker-{index}: cannot start: {e}");
                            return;
                        }
                    };
                    match worker.run() {
                        Ok(()) => watch.armed = false,
                        Err(e) => tracing::error!("worker-{index}: event loop failed: {e}"),
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
        let outboxes: Vec<Option<Outbox>> = (0..config.workers)
            .map(|index| pending_presence.as_ref().map(|p| p.outbox(index)))
            .collect();
        let presence = match pending_presence.map(|p| Presence::start(p, &config, fanout.clone())) {
            None => None,
            Some(Ok(presence)) => Some(presence),
            Some(Err(e)) => {
                drop(go_senders);
                for t in threads {
                    let _ = t.join();
                }
                broker.shutdown();
                return Err(e);
            }
        };
        let handle = presence.as_ref().map(Presence::handle);
        let read_side = match ReadSide::start(&config, &shared, &broker, handle, &stopping) {
            Ok(read_side) => read_side,
            Err(e) => {
                drop(go_senders);
                for t in threads {
                    let _ = t.join();
                }
                broker.shutdown();
                if let Some(presence) = presence {
                    presence.shutdown();
                }
                return Err(e);
            }
        };
        for (go, outbox) in go_senders.into_iter().zip(outboxes) {
            let _ = go.send(Some((broker.clone(), outbox)));
        }
        Ok(Server {
            local_addr: bind,
            fanout,
            broker,
            shared,
            stop: ManuallyDrop::new(stop),
            threads,
            presence,
            read_side,
        })
    }

    /// The address the workers listen on (with the real port when the
    /// configured one was 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where the read API listens (with the real port when the configured
    /// one was 0), if it is on.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.read_side.api.as_ref().map(Api::local_addr)
    }

    /// The same document `GET /health` serves.
    pub fn health(&self) -> Health {
        self.shared.health(&*self.broker)
    }

    /// Drains (503 while serving on), stops accepting, answers every
    /// message in flight, closes every connection with 1001 (waiting up to
    /// the configured grace for clients to answer), joins every worker,
    /// then stops the broker: the order in the module docs.
    pub fn shutdown(self) -> anyhow::Result<()> {
        self.stop(None)
    }

    /// [`Server::shutdown`], with the drain cut short once `hurry` is
    /// signalled (the rest of the order is kept: in-flight messages are
    /// still answered).
    pub fn shutdown_hurried_by(self, hurry: &Shutdown) -> anyhow::Result<()> {
        self.stop(Some(hurry))
    }

    fn stop(mut self, hurry: Option<&Shutdown>) -> anyhow::Result<()> {
        self.shared.start_draining();
        let drain = self.shared.config.drain;
        tracing::info!(
            "shutdown 1/5: draining for {} s (/health answers 503, everything else as usual)",
            drain.as_secs_f64()
        );
        if !drain.is_zero() {
            match hurry {
                Some(hurry) => {
                    if wait(hurry, drain) {
                        tracing::info!("shutdown: drain cut short by a second signal");
                    }
                }
                None => thread::sleep(drain),
            }
        }
        tracing::info!("shutdown 2/5: the read API stops");
        self.read_side.stop_api();
        tracing::info!(
            "shutdown 3/5: workers stop accepting, answer what is in flight and close their WebSockets with 1001"
        );
        self.stop.signal();
        self.fanout.shutdown();
        let mut panicked = 0;
        for thread in self.threads {
            if thread.join().is_err() {
                panicked += 1;
            }
        }
        tracing::info!(
            "shutdown 4/5: every worker stopped; the broker's links close, presence stops"
        );
        self.broker.shutdown();
        if let Some(presence) = self.presence.take() {
            presence.shutdown();
        }
        self.read_side.join();
        tracing::info!("shutdown 5/5: stopped");
        if panicked > 0 {
            return Err(anyhow!("{panicked} worker thread(s) panicked"));
        }
        Ok(())
    }
}

/// Builds the broker the configuration names (the default
/// [`BrokerFactory`]).
fn build_broker(config: &Config, fanout: Fanout) -> anyhow::Result<Arc<dyn Broker>> {
    Ok(match config.broker {
        BrokerKind::Rabbitmq => Arc::new(RabbitBroker::start(config, fanout)?),
        BrokerKind::Memory => Arc::new(MemoryBroker::new(fanout)),
        BrokerKind::None => Arc::new(NoBroker),
    })
}

/// Marks worker `index` dead in `/health` when dropped still armed: the
/// worker thread disarms it on a clean stop, so only an early exit or a
/// panic (whose unwinding drops it) marks the worker.
struct DeathWatch {
    shared: Arc<Shared>,
    index: usize,
    armed: bool,
}

impl Drop for DeathWatch {
    fn drop(&mut self) {
        if self.armed {
            self.shared.worker_died(self.index);
        }
    }
}

type Prepared = (Poll, mio::net::TcpListener, WorkerHandle, Inbox, SocketAddr);

/// The per-worker resources made on the worker's own (pinned) thread.
fn prepare(
    bind: SocketAddr,
    keepalive: Option<TcpKeepalive>,
    backlog: u32,
) -> anyhow::Result<Prepared> {
    let poll = Poll::new().context("creating the worker's Poll")?;
    let waker = Waker::new(poll.registry(), WAKER).context("creating the worker's Waker")?;
    let (handle, inbox) = inbox(waker);
    let listener = reuseport_listener(bind, keepalive, backlog)?;
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
/// Keepalive is set on the listener: Linux copies `SO_KEEPALIVE` and the
/// `TCP_KEEP*` values into every socket `accept` returns, so a client
/// socket costs no setsockopt of its own (the test below checks it).
/// `backlog` is `Config::listen_backlog` (the kernel caps it at
/// `net.core.somaxconn`).
fn reuseport_listener(
    addr: SocketAddr,
    keepalive: Option<TcpKeepalive>,
    backlog: u32,
) -> anyhow::Result<mio::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    if let Some(k) = keepalive {
        let params = socket2::TcpKeepalive::new()
            .with_time(k.idle)
            .with_interval(k.interval)
            .with_retries(k.probes);
        socket
            .set_tcp_keepalive(&params)
            .context("setting TCP keepalive on the listener")?;
    }
    socket
        .bind(&addr.into())
        .with_context(|| format!("binding {addr}"))?;
    // Config checks it is in 1..=2^20, which fits.
    let backlog = i32::try_from(backlog).unwrap_or(i32::MAX);
    socket
        .listen(backlog)
        .with_context(|| format!("listening on {addr} (backlog {backlog})"))?;
    Ok(mio::net::TcpListener::from_std(socket.into()))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// The kernel behaviour `reuseport_listener` relies on: accepted
    /// sockets inherit the listener's keepalive settings.
    #[test]
    fn accepted_sockets_inherit_the_listeners_keepalive() {
        let keepalive = TcpKeepalive {
            idle: Duration::from_secs(61),
            interval: Duration::from_secs(11),
            probes: 4,
        };
        let listener =
            reuseport_listener("127.0.0.1:0".parse().unwrap(), Some(keepalive), 128).unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let accepted = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    thread::sleep(Duration::from_millis(5))
                }
                Err(e) => panic!("accept: {e}"),
            }
        };
        let socket = socket2::SockRef::from(&accepted);
        assert!(socket.keepalive().unwrap());
        assert_eq!(socket.tcp_keepalive_time().unwrap(), keepalive.idle);
        assert_eq!(socket.tcp_keepalive_interval().unwrap(), keepalive.interval);
        assert_eq!(socket.tcp_keepalive_retries().unwrap(), keepalive.probes);

        let plain = reuseport_listener("127.0.0.1:0".parse().unwrap(), None, 128).unwrap();
        let _client = std::net::TcpStream::connect(plain.local_addr().unwrap()).unwrap();
        let accepted = loop {
            match plain.accept() {
                Ok((stream, _)) => break stream,
                Err(_) => thread::sleep(Duration::from_millis(5)),
            }
        };
        assert!(!socket2::SockRef::from(&accepted).keepalive().unwrap());
    }
}
