//! The read API (server/API.md) on its own port: `tiny_http` accepts and
//! parses requests (a thread per connection, bounded), and `API_THREADS`
//! named threads (`api-N`) answer them one at a time each, over an r2d2
//! pool of read-only PostgreSQL connections. Nothing here runs on a
//! worker's event loop, and a database outage touches only this port: the
//! API answers 503 with the reason, r2d2 reconnects, and it recovers by
//! itself.
//!
//! Layout: [`routes`] (path → endpoint, ids checked), [`params`] (query
//! string → typed values or a 400 naming the parameter), [`cursor`]
//! (opaque keyset cursors), [`endpoints`] (queries → documents), [`reply`]
//! (errors, timings, the JSON body), [`replica`] (the read replica's
//! lag, sampled), [`dashboard`] (`/`, the live page, and `/api/live`,
//! the JSON it polls: no database query), [`presence`] (member lists and
//! counts: no database query either).

pub mod cursor;
pub mod dashboard;
pub mod endpoints;
pub mod params;
pub mod presence;
pub mod replica;
pub mod reply;
pub mod routes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chatflow_database::pool::{ReadPool, ReadPoolConfig};
use chatflow_protocol::Rooms;
use replica::ReplicaMonitor;
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::ApiConfig;
use crate::metrics::ServerMetrics;
use crate::presence::PresenceHandle;
use params::Params;
use reply::{answer, ApiError, Timings};

/// Pending connections the kernel queues for the API's listener.
const LISTEN_BACKLOG: i32 = 1024;

/// The live system stats of `/api/metrics` and `/api/live` (fleet
/// snapshots, queue depths): where they come from is the server's
/// business, not the API's.
pub trait Live: Send + Sync {
    /// `{"source", "servers": [...]}` (or with an `"error"`).
    fn servers(&self, timings: &mut Timings) -> serde_json::Value;
    /// `{"source", "consumers": [...]}` (or with an `"error"`).
    fn consumers(&self, timings: &mut Timings) -> serde_json::Value;
    /// Queue depths per room (or `{"error"}`).
    fn queues(&self, timings: &mut Timings) -> serde_json::Value;
}

/// What every API thread shares.
pub struct ApiContext {
    pub rooms: Rooms,
    pub max_window: Duration,
    pub max_user_window: Duration,
    pub statement_timeout: Duration,
    pub pool: Arc<ReadPool>,
    /// `user@host:port/name` of what the pool reads, for the stats.
    pub database: String,
    /// With `DB_READ_HOST`: the replica's lag, sampled.
    pub replica: Option<Arc<ReplicaMonitor>>,
    pub live: Box<dyn Live>,
    /// `/metrics`, and the count of every request answered here.
    pub metrics: Arc<ServerMetrics>,
    /// Who is in each room (`None`: `--presence off`).
    pub presence: Option<PresenceHandle>,
}

impl ApiContext {
    /// The read pool `config` describes: on the replica if there is one,
    /// else the primary. Does not connect: the pool opens connections when
    /// asked (so a server whose database is down starts).
    pub fn pool(config: &ApiConfig) -> anyhow::Result<Arc<ReadPool>> {
        let pool = ReadPool::new(&ReadPoolConfig {
            database: config.reads().clone(),
            max_size: config.pool_size,
            checkout_timeout: config.pool_timeout,
            statement_timeout: config.statement_timeout,
            connect_timeout: config.pool_timeout,
        })
        .context("the read API's database settings")?;
        Ok(Arc::new(pool))
    }

    /// The context `config` describes, over `pool` (from [`Self::pool`]).
    pub fn new(
        config: &ApiConfig,
        rooms: Rooms,
        pool: Arc<ReadPool>,
        replica: Option<Arc<ReplicaMonitor>>,
        live: Box<dyn Live>,
        metrics: Arc<ServerMetrics>,
        presence: Option<PresenceHandle>,
    ) -> ApiContext {
        ApiContext {
            rooms,
            max_window: config.max_window,
            max_user_window: config.max_user_window,
            statement_timeout: config.statement_timeout,
            pool,
            database: config.reads().display(),
            replica,
            live,
            metrics,
            presence,
        }
    }

    fn query_error(&self, error: &postgres::Error) -> ApiError {
        ApiError::from_query(error, self.statement_timeout.as_secs_f64())
    }
}

/// The running API: its HTTP server and answering threads.
pub struct Api {
    server: Arc<tiny_http::Server>,
    local_addr: SocketAddr,
    threads: Vec<JoinHandle<()>>,
}

impl Api {
    /// Listens on `config.bind` (failing if the port is taken) and starts
    /// the answering threads.
    pub fn start(config: &ApiConfig, context: ApiContext) -> anyhow::Result<Api> {
        let listener = listener(config)?;
        let local_addr = listener.local_addr()?;
        let server =
            tiny_http::Server::from_listener_with_limit(listener, None, config.max_connections)
                .map_err(|e| {
                    anyhow::anyhow!("starting the API's HTTP server on {local_addr}: {e}")
                })?;
        let server = Arc::new(server);
        let context = Arc::new(context);
        let mut threads = Vec::with_capacity(config.threads);
        for index in 0..config.threads {
            let (server, context) = (server.clone(), context.clone());
            let thread = thread::Builder::new()
                .name(format!("api-{index}"))
                .spawn(move || serve(&server, &context))
                .context("spawning an API thread")?;
            threads.push(thread);
        }
        Ok(Api {
            server,
            local_addr,
            threads,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Lets each thread finish the request at hand, joins them, and closes
    /// the port.
    pub fn shutdown(self) {
        for _ in &self.threads {
            self.server.unblock();
        }
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// A plain listener (no `SO_REUSEPORT`: a taken port fails the start)
/// whose accepted sockets inherit its read and write timeouts and
/// `TCP_NODELAY` (Linux copies them to each accepted socket), since the
/// HTTP server accepts them itself.
fn listener(config: &ApiConfig) -> anyhow::Result<std::net::TcpListener> {
    let addr = config.bind;
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_read_timeout(Some(config.io_timeout))?;
    socket.set_write_timeout(Some(config.io_timeout))?;
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into()).with_context(|| {
        format!("the read API cannot listen on {addr} (--api-bind; \"off\" disables it)")
    })?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// One `api-N` thread: answers requests until unblocked.
fn serve(server: &tiny_http::Server, context: &ApiContext) {
    while let Ok(request) = server.recv() {
        handle(context, request);
    }
}

fn handle(context: &ApiContext, request: tiny_http::Request) {
    let (path, query) = routes::split_target(request.url());
    if path == "/metrics" {
        return metrics_page(context, request);
    }
    let started = Instant::now();
    let mut timings = Timings::default();
    let (result, content_type, any_origin) = match routes::dashboard_route(path) {
        Some(route) => {
            match dashboard::run(context, route, request.method(), query, &mut timings) {
                Ok(served) => (Ok(served.body), served.content_type, served.any_origin),
                Err(e) => (Err(e), "application/json", false),
            }
        }
        None => (
            route_and_run(context, &request, &mut timings),
            "application/json",
            false,
        ),
    };
    let done = answer(result, &timings, started);
    let mut response = tiny_http::Response::from_data(done.body)
        .with_status_code(done.status)
        .with_header(header("Content-Type", content_type))
        .with_header(header("Cache-Control", "no-store"));
    if any_origin {
        response.add_header(header("Access-Control-Allow-Origin", "*"));
    }
    if done.status == 405 {
        response.add_header(header("Allow", "GET, HEAD"));
    }
    if let Some(seconds) = done.retry_after {
        response.add_header(header("Retry-After", &seconds.to_string()));
    }
    (context.metrics).count_api_request(route_name(request.url(), context.rooms), done.status);
    // A client gone before its answer is its own business.
    let _ = request.respond(response);
}

/// `GET /metrics`: the Prometheus page (any other method: 405).
fn metrics_page(context: &ApiContext, request: tiny_http::Request) {
    let response = match request.method() {
        tiny_http::Method::Get | tiny_http::Method::Head => {
            context.metrics.count_api_request("metrics", 200);
            tiny_http::Response::from_data(context.metrics.encode().into_bytes())
                .with_header(header("Content-Type", chatflow_telemetry::CONTENT_TYPE))
        }
        other => {
            context.metrics.count_api_request("metrics", 405);
            let body = serde_json::json!({
                "error": format!("method {} not allowed: use GET", other.as_str())
            });
            tiny_http::Response::from_data(body.to_string().into_bytes())
                .with_status_code(405)
                .with_header(header("Content-Type", "application/json"))
                .with_header(header("Allow", "GET, HEAD"))
        }
    };
    let _ = request.respond(response.with_header(header("Cache-Control", "no-store")));
}

/// The route's name for the request count (a fixed set: never the raw
/// path, whose ids would make a series per room or user).
fn route_name(target: &str, rooms: Rooms) -> &'static str {
    let path = routes::split_target(target).0;
    match routes::dashboard_route(path) {
        Some(routes::DashboardRoute::Page) => "dashboard",
        Some(routes::DashboardRoute::Live) => "live",
        None => routes::route(path, rooms).map_or("unknown", routes::Route::name),
    }
}

fn route_and_run(
    context: &ApiContext,
    request: &tiny_http::Request,
    timings: &mut Timings,
) -> Result<Vec<u8>, ApiError> {
    let (path, query) = routes::split_target(request.url());
    let route = routes::route(path, context.rooms)?;
    match request.method() {
        tiny_http::Method::Get | tiny_http::Method::Head => {}
        other => return Err(ApiError::method_not_allowed(other.as_str())),
    }
    let params = Params::parse(query, endpoints::allowed(&route))?;
    endpoints::run(context, route, &params, timings)
}

fn header(name: &str, value: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes())
        .expect("static header names and ASCII values")
}
