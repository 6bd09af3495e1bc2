//! Writing metric families at scrape time, and the text encoding.
//!
//! A [`prometheus_client::collector::Collector`] gets a
//! `DescriptorEncoder` per scrape; [`Scrape`] wraps it with one call per
//! family kind, so a collector reads like the list of what it exports.
//! Names are given without the `_total` a counter gets from the encoder,
//! and with their base unit (`_seconds`, `_bytes`) spelled out.

use std::fmt;

use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::histogram::HistogramSnapshot;

/// What `/metrics` answers with: the OpenMetrics text format, which
/// Prometheus (2.5 and later) scrapes natively.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A registry in the text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::with_capacity(16 * 1024);
    // Writing into a String cannot fail; a collector's own error would be
    // a bug in it, and a partial page is still better than none.
    if let Err(fmt::Error) = prometheus_client::encoding::text::encode(&mut out, registry) {
        out.push_str("# encoding failed\n# EOF\n");
    }
    out
}

/// Labels of one sample: `[("worker", "0".into())]`.
pub type Labels = Vec<(&'static str, String)>;

/// One scrape's families, written as a collector reads them.
pub struct Scrape<'a> {
    encoder: DescriptorEncoder<'a>,
}

impl<'a> Scrape<'a> {
    pub fn new(encoder: DescriptorEncoder<'a>) -> Self {
        Scrape { encoder }
    }

    /// A counter without labels (`name` gets `_total` from the encoder).
    pub fn counter(&mut self, name: &str, help: &str, value: u64) -> fmt::Result {
        let mut metric = (self.encoder).encode_descriptor(name, help, None, MetricType::Counter)?;
        metric.encode_counter::<NoLabelSet, _, u64>(&value, None)
    }

    /// A counter with one sample per label set.
    pub fn counters(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (Labels, u64)>,
    ) -> fmt::Result {
        let mut family = (self.encoder).encode_descriptor(name, help, None, MetricType::Counter)?;
        for (labels, value) in samples {
            family
                .encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
        }
        Ok(())
    }

    /// A counter of a real quantity (CPU seconds).
    pub fn counter_f64(&mut self, name: &str, help: &str, value: f64) -> fmt::Result {
        let mut metric = (self.encoder).encode_descriptor(name, help, None, MetricType::Counter)?;
        metric.encode_counter::<NoLabelSet, _, f64>(&value, None)
    }

    pub fn gauge(&mut self, name: &str, help: &str, value: f64) -> fmt::Result {
        let mut metric = (self.encoder).encode_descriptor(name, help, None, MetricType::Gauge)?;
        metric.encode_gauge(&value)
    }

    pub fn gauges(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (Labels, f64)>,
    ) -> fmt::Result {
        let mut family = (self.encoder).encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (labels, value) in samples {
            family.encode_family(&labels)?.encode_gauge(&value)?;
        }
        Ok(())
    }

    /// 1 or 0.
    pub fn flag(&mut self, name: &str, help: &str, on: bool) -> fmt::Result {
        self.gauge(name, help, if on { 1.0 } else { 0.0 })
    }

    pub fn histogram(&mut self, name: &str, help: &str, h: &HistogramSnapshot) -> fmt::Result {
        let mut metric =
            (self.encoder).encode_descriptor(name, help, None, MetricType::Histogram)?;
        metric.encode_histogram::<NoLabelSet>(h.sum(), h.count(), &h.buckets(), None)
    }

    pub fn histograms(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (Labels, HistogramSnapshot)>,
    ) -> fmt::Result {
        let mut family =
            (self.encoder).encode_descriptor(name, help, None, MetricType::Histogram)?;
        for (labels, h) in samples {
            family
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(h.sum(), h.count(), &h.buckets(), None)?;
        }
        Ok(())
    }
}

/// Makes a label set; `labels!("worker" => 3)`.
#[macro_export]
macro_rules! labels {
    ($($key:literal => $value:expr),* $(,)?) => {
        vec![$(($key, $value.to_string())),*]
    };
}

// A compile-time check that the label type is one the encoder takes.
#[allow(dead_code)]
fn labels_encode(labels: &Labels) -> &impl EncodeLabelSet {
    labels
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::histogram::Histogram;
    use prometheus_client::collector::Collector;

    #[derive(Debug)]
    struct Fixed;

    impl Collector for Fixed {
        fn encode(&self, encoder: DescriptorEncoder) -> fmt::Result {
            let mut s = Scrape::new(encoder);
            s.counter("demo_requests", "Requests.", 7)?;
            s.gauges(
                "demo_connections",
                "Open connections per worker.",
                [(labels!("worker" => 0), 2.0), (labels!("worker" => 1), 3.0)],
            )?;
            let h = Histogram::seconds(&[0.1, 1.0]);
            h.observe(0.05);
            h.observe(0.5);
            h.observe(5.0);
            s.histogram("demo_latency_seconds", "Latency.", &h.snapshot())
        }
    }

    #[test]
    fn families_encode_as_openmetrics_text() {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Fixed));
        let text = encode(&registry);
        for line in [
            "# TYPE demo_requests counter",
            "demo_requests_total 7",
            "demo_connections{worker=\"0\"} 2.0",
            "demo_connections{worker=\"1\"} 3.0",
            "# TYPE demo_latency_seconds histogram",
            "demo_latency_seconds_sum 5.55",
            "demo_latency_seconds_count 3",
            "demo_latency_seconds_bucket{le=\"0.1\"} 1",
            "demo_latency_seconds_bucket{le=\"1.0\"} 2",
            "demo_latency_seconds_bucket{le=\"+Inf\"} 3",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }
}
