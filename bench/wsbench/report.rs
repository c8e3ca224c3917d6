//! Results: a JSON document per run (machine-readable, for charts and
//! aggregation) and a Markdown summary (for people), plus the aggregation of
//! child processes' results.

use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

/// Percentiles of a latency histogram (recorded in microseconds).
pub fn latency_json(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!({"count": 0});
    }
    json!({
        "count": h.len(),
        "p50_us": h.value_at_quantile(0.50),
        "p90_us": h.value_at_quantile(0.90),
        "p99_us": h.value_at_quantile(0.99),
        "p999_us": h.value_at_quantile(0.999),
        "max_us": h.max(),
        "mean_us": (h.mean() * 10.0).round() / 10.0,
    })
}

pub fn new_histogram() -> Histogram<u64> {
    // 1 µs .. 100 s at 3 significant digits.
    Histogram::new_with_bounds(1, 100_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).expect("histogram"))
}

/// Sums the additive figures of child results (connect scenario).
pub fn aggregate_children(children: &[Value]) -> Value {
    let mut out = Map::new();
    let sum = |k: &str| -> u64 { children.iter().filter_map(|c| c[k].as_u64()).sum() };
    for k in ["opened", "failed", "drops_during_hold"] {
        out.insert(k.into(), json!(sum(k)));
    }
    let mut failures = Map::new();
    for c in children {
        if let Some(f) = c["failures"].as_object() {
            for (reason, n) in f {
                let prev = failures.get(reason).and_then(Value::as_u64).unwrap_or(0);
                failures.insert(reason.clone(), json!(prev + n.as_u64().unwrap_or(0)));
            }
        }
    }
    out.insert("failures".into(), Value::Object(failures));
    let ramp = children
        .iter()
        .filter_map(|c| c["ramp_secs"].as_f64())
        .fold(0.0, f64::max);
    out.insert("ramp_secs".into(), json!(ramp));
    let cpu: f64 = children
        .iter()
        .filter_map(|c| c["client_cpu_secs"].as_f64())
        .sum();
    out.insert("client_cpu_secs".into(), json!(cpu));
    out.insert("processes".into(), json!(children.len()));
    Value::Object(out)
}

fn fmt_num(v: &Value) -> String {
    match v {
        Value::Number(n) if n.is_f64() => format!("{:.2}", n.as_f64().unwrap_or(0.0)),
        Value::Null => "–".into(),
        other => other.to_string(),
    }
}

/// A two-column Markdown table of the scalar figures of `result`.
pub fn markdown(title: &str, result: &Value) -> String {
    let mut s = format!("## {title}\n\n| figure | value |\n|---|---|\n");
    if let Some(obj) = result.as_object() {
        for (k, v) in obj {
            match v {
                Value::Object(inner) if k != "timeseries" => {
                    for (ik, iv) in inner {
                        if !iv.is_array() {
                            s.push_str(&format!("| {k}.{ik} | {} |\n", fmt_num(iv)));
                        }
                    }
                }
                Value::Array(_) => {}
                _ => s.push_str(&format!("| {k} | {} |\n", fmt_num(v))),
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_aggregate() {
        let a = json!({"opened": 10, "failed": 1, "drops_during_hold": 0, "failures": {"refused": 1}, "ramp_secs": 2.0, "client_cpu_secs": 0.5});
        let b = json!({"opened": 20, "failed": 2, "drops_during_hold": 1, "failures": {"refused": 1, "reset": 1}, "ramp_secs": 3.5, "client_cpu_secs": 0.25});
        let t = aggregate_children(&[a, b]);
        assert_eq!(t["opened"], 30);
        assert_eq!(t["failed"], 3);
        assert_eq!(t["failures"]["refused"], 2);
        assert_eq!(t["failures"]["reset"], 1);
        assert_eq!(t["ramp_secs"], 3.5);
        assert_eq!(t["client_cpu_secs"], 0.75);
        assert_eq!(t["processes"], 2);
    }

    #[test]
    fn percentiles_and_markdown() {
        let mut h = new_histogram();
        for v in 1..=1000 {
            h.record(v).unwrap();
        }
        let j = latency_json(&h);
        assert_eq!(j["count"], 1000);
        assert!(j["p99_us"].as_u64().unwrap() >= 985);
        let md = markdown("t", &json!({"a": 1, "lat": j, "timeseries": [1, 2]}));
        assert!(
            md.contains("| a | 1 |") && md.contains("| lat.p50_us |") && !md.contains("timeseries")
        );
    }
}
