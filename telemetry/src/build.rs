//! `chatflow_build_info`: a gauge of 1 whose labels say which build runs
//! (the workspace version and the git commit, recorded by `build.rs`), so
//! a dashboard can tell a fleet mid-deploy.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use crate::labels;
use crate::scrape::Scrape;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const GIT_COMMIT: &str = env!("CHATFLOW_GIT_COMMIT");

/// `binary` is `chatflow-server` or `chatflow-consumer`.
#[derive(Debug)]
pub struct BuildInfo {
    pub binary: &'static str,
}

impl Collector for BuildInfo {
    fn encode(&self, encoder: DescriptorEncoder) -> fmt::Result {
        Scrape::new(encoder).gauges(
            "chatflow_build_info",
            "The running build: 1, labelled with its version and git commit.",
            [(
                labels!("binary" => self.binary, "version" => VERSION, "commit" => GIT_COMMIT),
                1.0,
            )],
        )
    }
}
