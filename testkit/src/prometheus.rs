//! Reads a `/metrics` page with a real parser: the Prometheus project's
//! Python client (`prometheus_client.openmetrics.parser`, strict
//! OpenMetrics: `# EOF`, `_total` counters, cumulative histogram buckets
//! ending in `+Inf`). `scripts/ensure-tools.sh prometheus-parser`
//! installs it. A page it refuses fails the test with the parser's words.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

/// One sample: its full name (`foo_total`, `foo_bucket`), labels, value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The sample's name, with any suffix.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// A parsed page: every family's type, and every sample.
#[derive(Clone, Debug, Default)]
pub struct Page {
    /// Family name → type (`counter`, `gauge`, `histogram`, `info`…).
    pub types: BTreeMap<String, String>,
    /// Every sample, in page order.
    pub samples: Vec<Sample>,
}

impl Page {
    /// The samples called `name`.
    pub fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }

    /// The sum of every sample called `name` (all label sets); panics if
    /// there is none, naming it.
    pub fn sum(&self, name: &str) -> f64 {
        let values: Vec<f64> = self.named(name).map(|s| s.value).collect();
        assert!(!values.is_empty(), "no sample {name} on the page");
        values.iter().sum()
    }

    /// The value of the one sample called `name` with these labels.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<&Sample> = (self.named(name))
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect();
        assert_eq!(found.len(), 1, "{name}{labels:?}: {found:?}");
        found[0].value
    }
}

const PARSER: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = {"types": {}, "samples": []}
for family in text_string_to_metric_families(sys.stdin.read()):
    out["types"][family.name] = family.type
    for s in family.samples:
        out["samples"].append({"name": s.name, "labels": s.labels, "value": s.value})
json.dump(out, sys.stdout)
"#;

/// Parses `text`, or panics with why the parser refused it.
pub fn parse(text: &str) -> Page {
    let mut child = Command::new("python3")
        .args(["-c", PARSER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs (scripts/ensure-tools.sh prometheus-parser)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("the page goes to the parser");
    let output = child.wait_with_output().expect("the parser ends");
    assert!(
        output.status.success(),
        "the OpenMetrics parser refused the page: {}\n--- page ---\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("the parser's JSON");
    let types = (json["types"].as_object().expect("types").iter())
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
        .collect();
    let samples = (json["samples"].as_array().expect("samples").iter())
        .map(|s| Sample {
            name: s["name"].as_str().expect("name").to_string(),
            labels: (s["labels"].as_object().expect("labels").iter())
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                .collect(),
            value: s["value"].as_f64().expect("a numeric value"),
        })
        .collect();
    Page { types, samples }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_page_parses_and_a_broken_one_panics() {
        let page = parse(
            "# TYPE a counter\na_total{w=\"0\"} 2\na_total{w=\"1\"} 3\n# TYPE h histogram\nh_bucket{le=\"1.0\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_count 2\nh_sum 3.5\n# EOF\n",
        );
        assert_eq!(page.types["a"], "counter");
        assert_eq!(page.sum("a_total"), 5.0);
        assert_eq!(page.value("h_bucket", &[("le", "+Inf")]), 2.0);
        // No `# EOF`: not OpenMetrics.
        let refused = std::panic::catch_unwind(|| parse("# TYPE a counter\na_total 1\n"));
        assert!(refused.is_err());
    }
}
