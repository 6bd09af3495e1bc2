//! The read replica's lag, sampled once a second on a thread of its own
//! (`replica-lag`) through the API's pool, so `/api/metrics` and
//! `/metrics` report it without a query of their own and a replica that
//! stops answering shows as an error here rather than as a slow scrape.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use chatflow_broker::retry::wait;
use chatflow_broker::Shutdown;
use chatflow_database::pool::ReadPool;
use chatflow_database::read::replica::{replica_state, ReplicaState};
use chatflow_database::read::rfc3339;
use parking_lot::Mutex;
use serde::Serialize;

/// Often enough to see a lag of seconds; one cheap query.
const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// The latest sample, as `/api/metrics` shows it.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaReport {
    /// `user@host:port/name` of the replica.
    pub address: String,
    /// The last successful sample (`None` before the first).
    #[serde(flatten)]
    pub state: Option<ReplicaState>,
    /// When it was taken.
    pub sampled_at: Option<String>,
    /// Why the last attempt failed (`None` when it worked).
    pub error: Option<String>,
}

impl ReplicaReport {
    /// The last attempt worked.
    pub fn up(&self) -> bool {
        self.error.is_none() && self.state.is_some()
    }
}

/// The sampler thread and what it last saw.
pub struct ReplicaMonitor {
    report: Arc<Mutex<ReplicaReport>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl ReplicaMonitor {
    /// Starts sampling `pool` (the API's, pointed at the replica) until
    /// `shutdown`.
    pub fn start(
        pool: Arc<ReadPool>,
        address: String,
        shutdown: Shutdown,
    ) -> std::io::Result<ReplicaMonitor> {
        let report = Arc::new(Mutex::new(ReplicaReport {
            address,
            ..ReplicaReport::default()
        }));
        let thread = {
            let report = report.clone();
            std::thread::Builder::new()
                .name("replica-lag".to_string())
                .spawn(move || loop {
                    let sample = pool
                        .get()
                        .map_err(|e| e.to_string())
                        .and_then(|mut con| replica_state(&mut *con).map_err(|e| e.to_string()));
                    {
                        let mut report = report.lock();
                        match sample {
                            Ok(state) => {
                                report.state = Some(state);
                                report.sampled_at = Some(rfc3339(SystemTime::now()));
                                report.error = None;
                            }
                            Err(e) => report.error = Some(e),
                        }
                    }
                    if wait(&shutdown, SAMPLE_INTERVAL) {
                        return;
                    }
                })?
        };
        Ok(ReplicaMonitor {
            report,
            thread: Mutex::new(Some(thread)),
        })
    }

    pub fn report(&self) -> ReplicaReport {
        self.report.lock().clone()
    }

    /// Waits for the thread (after the stop signal).
    pub fn join(&self) {
        if let Some(thread) = self.thread.lock().take() {
            let _ = thread.join();
        }
    }
}
