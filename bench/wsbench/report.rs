//! The Markdown summary of a run (for people; the JSON document is for
//! machines and charts).

use serde_json::Value;

use crate::results::Results;

fn fmt_num(v: &Value) -> String {
    match v {
        Value::Number(n) if n.is_f64() => format!("{:.2}", n.as_f64().unwrap_or(0.0)),
        Value::Null => "–".into(),
        other => other.to_string(),
    }
}

/// A two-column Markdown table of every scalar figure of `result` (nested
/// ones as `outer.inner`; series and lists left out).
pub fn markdown(title: &str, result: &Results) -> String {
    let mut s = format!("## {title}\n\n| figure | value |\n|---|---|\n");
    // Rendering every field generically keeps the table complete as figures
    // are added; nothing is looked up by name.
    let doc = serde_json::to_value(result).unwrap_or(Value::Null);
    if let Some(obj) = doc.as_object() {
        for (k, v) in obj {
            match v {
                Value::Object(inner) => {
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
    use crate::results::{new_histogram, Echo, Latency};

    #[test]
    fn markdown_lists_scalars_and_nested_figures() {
        let mut h = new_histogram();
        for v in 1..=1000 {
            h.record(v).unwrap();
        }
        let doc = Results::Echo(Echo {
            connections: 1,
            failed_to_open: 0,
            closed_by_server: 0,
            round_trips: 1000,
            round_trips_per_sec: None,
            latency: Latency::of(&h),
            server_cpu_us_per_round_trip: Some(2.5),
            client_cpu_us_per_round_trip: None,
            tls: None,
        });
        let md = markdown("t", &doc);
        assert!(md.contains("| scenario | \"echo\" |"), "{md}");
        assert!(md.contains("| round_trips | 1000 |"), "{md}");
        assert!(md.contains("| latency.p50_us |"), "{md}");
        assert!(md.contains("| round_trips_per_sec | – |"), "{md}");
        assert!(
            md.contains("| server_cpu_us_per_round_trip | 2.50 |"),
            "{md}"
        );
    }
}
