//! Where the read API's live stats come from ([`api::Live`]): this server's
//! own counters. (Fleet-wide snapshots over Redis and RabbitMQ queue
//! depths plug in here.)

use std::sync::Arc;

use serde_json::json;

use crate::api::reply::Timings;
use crate::api::Live;
use crate::broker::Broker;
use crate::stats::Shared;

/// The live stats of one server.
pub struct ServerLive {
    pub shared: Arc<Shared>,
    pub broker: Arc<dyn Broker>,
}

impl Live for ServerLive {
    fn servers(&self, timings: &mut Timings) -> serde_json::Value {
        let health = timings.time("liveServers", || self.shared.health(&*self.broker));
        json!({"source": "local", "servers": [health]})
    }

    fn consumers(&self, _timings: &mut Timings) -> serde_json::Value {
        json!({"source": "none", "error": "consumer snapshots are not available", "consumers": []})
    }

    fn queues(&self, _timings: &mut Timings) -> serde_json::Value {
        json!({"error": "queue depths are not available"})
    }
}
