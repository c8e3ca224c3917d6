//! `wsbench report`: charts (SVG and PNG) from a results JSON document.
//!
//! Picking the data out of the typed results is done by pure functions
//! (unit-tested below); the drawing code only lays out what they return. Text in the PNGs
//! is rendered with DejaVu Sans, embedded in the binary (the `dejavu` crate),
//! so no system font or fontconfig is needed; SVGs carry text as `<text>`.

use std::path::{Path, PathBuf};

use clap::Args;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::results::Results;

#[derive(Args, Clone, Debug)]
pub struct ReportArgs {
    /// A results JSON written by `wsbench <scenario> --out FILE`.
    pub results: PathBuf,
    /// Directory for the charts (default: the JSON's directory).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Pixel size of every chart (SVG user units and PNG pixels alike).
const SIZE: (u32, u32) = (1000, 600);

/// The percentiles plotted per distribution: (JSON key, axis label), in the
/// order of [`crate::results::Percentiles::values_us`].
pub const PERCENTILES: [(&str, &str); 5] = [
    ("p50_us", "p50"),
    ("p90_us", "p90"),
    ("p99_us", "p99"),
    ("p999_us", "p99.9"),
    ("max_us", "max"),
];

/// The ramp: connections open and server RSS over time.
#[derive(Debug, Clone, PartialEq)]
pub struct Ramp {
    /// (seconds, connections open), starting at (0, 0).
    pub open: Vec<(f64, f64)>,
    /// (seconds, server RSS in MiB); empty when no server was measured.
    pub rss_mib: Vec<(f64, f64)>,
}

impl Ramp {
    pub fn t_max(&self) -> f64 {
        let t = self
            .open
            .iter()
            .chain(&self.rss_mib)
            .map(|p| p.0)
            .fold(0.0, f64::max);
        if t > 0.0 {
            t
        } else {
            1.0
        }
    }

    /// Top of the connections axis, with a little headroom.
    pub fn open_max(&self) -> f64 {
        headroom(self.open.iter().map(|p| p.1).fold(0.0, f64::max))
    }

    /// Top of the RSS axis, with a little headroom.
    pub fn rss_max(&self) -> f64 {
        headroom(self.rss_mib.iter().map(|p| p.1).fold(0.0, f64::max))
    }
}

fn headroom(max: f64) -> f64 {
    if max > 0.0 {
        max * 1.08
    } else {
        1.0
    }
}

/// The ramp from the document's `timeseries`; `None` when there is none.
/// RSS is plotted only when some sample is non-zero (it is 0 when no
/// `--server-pid` was given); the run's `server_rss_before`, when measured,
/// is its value at t = 0.
pub fn ramp(doc: &Results) -> Option<Ramp> {
    let (samples, rss_before) = doc.ramp()?;
    let mut open = Vec::new();
    let mut rss = Vec::new();
    for e in samples {
        open.push((e.t, e.open as f64));
        rss.push((e.t, e.server_rss as f64 / (1024.0 * 1024.0)));
    }
    if open.is_empty() {
        return None;
    }
    open.sort_by(|a, b| a.0.total_cmp(&b.0));
    rss.sort_by(|a, b| a.0.total_cmp(&b.0));
    if open[0].0 > 0.0 {
        open.insert(0, (0.0, 0.0));
    }
    if rss.iter().all(|p| p.1 == 0.0) {
        rss.clear();
    } else if let Some(before) = rss_before {
        if rss.first().is_some_and(|p| p.0 > 0.0) {
            rss.insert(0, (0.0, before as f64 / (1024.0 * 1024.0)));
        }
    }
    Some(Ramp { open, rss_mib: rss })
}

/// One latency distribution: its field name in the document, its sample
/// count and its percentiles in µs, in [`PERCENTILES`] order.
#[derive(Debug, Clone, PartialEq)]
pub struct Latency {
    pub name: String,
    pub count: Option<u64>,
    pub values_us: [f64; 5],
}

/// Every latency distribution of the document that has samples.
pub fn latencies(doc: &Results) -> Vec<Latency> {
    doc.latencies()
        .into_iter()
        .filter_map(|(name, l)| {
            Some(Latency {
                name: name.to_string(),
                count: Some(l.count),
                values_us: l.percentiles?.values_us(),
            })
        })
        .collect()
}

/// Bounds of a log axis covering `[min, max]` µs: whole decades, at least
/// one decade wide, never below 1 µs, with room below the shortest bar (a
/// factor of 3 at least, so a value just above a decade still shows as a
/// bar) and above the tallest (a factor of 4 at least) for the legend.
pub fn log_bounds(min: f64, max: f64) -> (f64, f64) {
    let min = min.max(1.0);
    let max = max.max(min);
    let lo = 10f64.powf((min / 3.0).log10().floor()).max(1.0);
    let mut hi = 10f64.powf((max * 4.0).log10().ceil());
    if hi <= lo {
        hi = lo * 10.0;
    }
    (lo, hi)
}

/// A duration in µs for an axis label: `850µs`, `1.5ms`, `2s`.
pub fn fmt_us(us: f64) -> String {
    let (v, unit) = if us >= 1e6 {
        (us / 1e6, "s")
    } else if us >= 1e3 {
        (us / 1e3, "ms")
    } else {
        (us, "µs")
    };
    let s = format!("{v:.1}");
    let s = s.strip_suffix(".0").unwrap_or(&s);
    format!("{s}{unit}")
}

/// A count for an axis label: `950`, `25k`, `1.2M`.
pub fn fmt_count(n: f64) -> String {
    let (v, unit) = if n.abs() >= 1e6 {
        (n / 1e6, "M")
    } else if n.abs() >= 1e4 {
        (n / 1e3, "k")
    } else {
        return format!("{}", n.round());
    };
    let s = format!("{v:.1}");
    let s = s.strip_suffix(".0").unwrap_or(&s);
    format!("{s}{unit}")
}

/// MiB for an axis label: whole MiB once the axis reaches 10.
pub fn fmt_mib(v: f64, axis_max: f64) -> String {
    if axis_max >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// The percentile label at an x-axis position (bars sit at 0, 1, … 4).
pub fn percentile_label(x: f64) -> String {
    let i = x.round();
    if (x - i).abs() > 1e-6 || i < 0.0 {
        return String::new();
    }
    PERCENTILES
        .get(i as usize)
        .map_or(String::new(), |p| p.1.to_string())
}

/// A short title for the charts: the stem plus what the document says it is.
pub fn title(stem: &str, doc: &Results) -> String {
    match (doc.scenario(), doc.scale()) {
        (s, 0) => format!("{stem}: {s}"),
        (s, n) => format!("{stem}: {s}, {} connections", fmt_count(n as f64)),
    }
}

/// Where a chart goes: `<dir>/<stem>-<kind>.<ext>`.
pub fn chart_path(dir: &Path, stem: &str, kind: &str, ext: &str) -> PathBuf {
    dir.join(format!("{stem}-{kind}.{ext}"))
}

/// The output directory: `--out`, else the JSON's own directory.
pub fn out_dir(results: &Path, out: Option<&Path>) -> PathBuf {
    match out {
        Some(d) => d.to_path_buf(),
        None => match results.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        },
    }
}

/// `wsbench report`: writes the charts, prints their paths.
pub fn report(a: ReportArgs) -> Result<(), String> {
    let text = std::fs::read_to_string(&a.results)
        .map_err(|e| format!("cannot read {}: {e}", a.results.display()))?;
    let doc: Results = serde_json::from_str(&text).map_err(|e| {
        format!(
            "{} is not a wsbench results document: {e}",
            a.results.display()
        )
    })?;
    let dir = out_dir(&a.results, a.out.as_deref());
    let stem = a
        .results
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("results")
        .to_string();
    let written = render(&doc, &stem, &dir)?;
    if written.is_empty() {
        return Err(format!(
            "{}: nothing to chart (no timeseries, no latency percentiles)",
            a.results.display()
        ));
    }
    for p in written {
        println!("{}", p.display());
    }
    Ok(())
}

/// Writes every chart the document has data for into `dir`; returns the
/// paths written. Charts without data are skipped with a note on stderr.
pub fn render(doc: &Results, stem: &str, dir: &Path) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    register_font();
    let title = title(stem, doc);
    let mut written = Vec::new();
    // A restart's series is its clients connected through the disruption.
    let ramp_title = match doc {
        Results::Restart(_) => format!("{title}: connected clients"),
        _ => format!("{title}: ramp"),
    };
    match ramp(doc) {
        Some(r) => {
            let svg = chart_path(dir, stem, "ramp", "svg");
            draw_ramp(
                &SVGBackend::new(&svg, SIZE).into_drawing_area(),
                &r,
                &ramp_title,
            )?;
            written.push(svg);
            let png = chart_path(dir, stem, "ramp", "png");
            draw_ramp(
                &BitMapBackend::new(&png, SIZE).into_drawing_area(),
                &r,
                &ramp_title,
            )?;
            written.push(png);
        }
        None => eprintln!("wsbench report: no `timeseries` in {stem}: ramp chart skipped"),
    }
    let lat = latencies(doc);
    if lat.is_empty() {
        eprintln!("wsbench report: no latency percentiles in {stem}: latency chart skipped");
    } else {
        let svg = chart_path(dir, stem, "latency", "svg");
        draw_latency(
            &SVGBackend::new(&svg, SIZE).into_drawing_area(),
            &lat,
            &title,
        )?;
        written.push(svg);
        let png = chart_path(dir, stem, "latency", "png");
        draw_latency(
            &BitMapBackend::new(&png, SIZE).into_drawing_area(),
            &lat,
            &title,
        )?;
        written.push(png);
    }
    Ok(written)
}

/// Makes DejaVu Sans the "sans-serif" family for bitmap text (once).
fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
            .is_err()
        {
            eprintln!("wsbench report: the embedded font did not load");
        }
    });
}

fn err<E: std::fmt::Display>(e: E) -> String {
    format!("drawing failed: {e}")
}

const FONT: &str = "sans-serif";

/// Radius in pixels of the marks on each ramp sample.
const MARK_RADIUS: i32 = 3;

fn draw_ramp<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    r: &Ramp,
    title: &str,
) -> Result<(), String> {
    let with_rss = !r.rss_mib.is_empty();
    let rss_max = r.rss_max();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(root)
        .caption(title, (FONT, 22))
        .margin(14)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .right_y_label_area_size(if with_rss { 70 } else { 0 })
        .build_cartesian_2d(0f64..r.t_max(), 0f64..r.open_max())
        .map_err(err)?
        .set_secondary_coord(0f64..r.t_max(), 0f64..rss_max);
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("connections open")
        .y_label_formatter(&|v| fmt_count(*v))
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .draw()
        .map_err(err)?;
    let blue = BLUE.stroke_width(2);
    chart
        .draw_series(LineSeries::new(r.open.iter().copied(), blue))
        .map_err(err)?
        .label("connections open")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], blue));
    // Each sample marked: the line between two points is an interpolation.
    chart
        .draw_series(
            r.open
                .iter()
                .map(|&p| Circle::new(p, MARK_RADIUS, BLUE.filled())),
        )
        .map_err(err)?;
    if with_rss {
        chart
            .configure_secondary_axes()
            .y_desc("server RSS (MiB)")
            .y_label_formatter(&|v| fmt_mib(*v, rss_max))
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 15))
            .draw()
            .map_err(err)?;
        let red = RED.stroke_width(2);
        chart
            .draw_secondary_series(LineSeries::new(r.rss_mib.iter().copied(), red))
            .map_err(err)?
            .label("server RSS (MiB)")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], red));
        chart
            .draw_secondary_series(
                r.rss_mib
                    .iter()
                    .map(|&p| Circle::new(p, MARK_RADIUS, RED.filled())),
            )
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

fn draw_latency<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    sets: &[Latency],
    title: &str,
) -> Result<(), String> {
    let all = sets.iter().flat_map(|s| s.values_us);
    let (lo, hi) = log_bounds(
        all.clone().fold(f64::INFINITY, f64::min),
        all.fold(0.0, f64::max),
    );
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(root)
        .caption(format!("{title}: latency percentiles"), (FONT, 22))
        .margin(14)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(-0.5f64..4.5f64, (lo..hi).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(PERCENTILES.len())
        .x_label_formatter(&|x| percentile_label(*x))
        .y_label_formatter(&|y| fmt_us(*y))
        .x_desc("percentile")
        .y_desc("latency (log scale)")
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .draw()
        .map_err(err)?;
    let width = 0.8 / sets.len() as f64;
    for (j, set) in sets.iter().enumerate() {
        let color = Palette99::pick(j).to_rgba();
        let x_of = move |i: usize| i as f64 - 0.4 + j as f64 * width;
        chart
            .draw_series(set.values_us.iter().enumerate().map(|(i, &v)| {
                Rectangle::new(
                    [(x_of(i), lo), (x_of(i) + width * 0.9, v.max(lo))],
                    color.filled(),
                )
            }))
            .map_err(err)?
            .label(match set.count {
                Some(n) => format!("{} (n = {n})", set.name),
                None => set.name.clone(),
            })
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::{BroadcastFigures, Churn, Latency as Dist};
    use crate::results::{Connect, Echo, Percentiles, Sample, ServerFigures};

    fn connect(samples: &[(f64, u64, u64)], rss_before: Option<u64>) -> Results {
        Results::Connect(Box::new(Connect {
            target: 1000,
            timeseries: samples
                .iter()
                .map(|&(t, open, server_rss)| Sample {
                    t,
                    open,
                    server_rss,
                })
                .collect(),
            server: rss_before.map(|b| ServerFigures {
                server_rss_before: b,
                ..ServerFigures::default()
            }),
            ..Connect::default()
        }))
    }

    fn dist(count: u64, p: u64) -> Dist {
        Dist {
            count,
            percentiles: Some(Percentiles {
                p50_us: p,
                p90_us: p + 1,
                p99_us: p + 2,
                p999_us: p + 3,
                max_us: p + 4,
                mean_us: p as f64 + 0.5,
            }),
        }
    }

    #[test]
    fn ramp_from_timeseries() {
        let doc = connect(
            &[(1.0, 100, 20 << 20), (2.5, 300, 30 << 20)],
            Some(10 << 20),
        );
        let r = ramp(&doc).unwrap();
        assert_eq!(r.open, vec![(0.0, 0.0), (1.0, 100.0), (2.5, 300.0)]);
        assert_eq!(r.rss_mib, vec![(0.0, 10.0), (1.0, 20.0), (2.5, 30.0)]);
        assert_eq!(r.t_max(), 2.5);
        assert!(r.open_max() > 300.0 && r.rss_max() > 30.0);
    }

    #[test]
    fn ramp_without_server_pid_or_data() {
        let doc = connect(&[(0.4, 50, 0)], None);
        let r = ramp(&doc).unwrap();
        assert!(r.rss_mib.is_empty(), "all-zero RSS is not plotted");
        assert_eq!(r.open.len(), 2);
        assert_eq!(ramp(&connect(&[], Some(1))), None);
        let churn = Results::Churn(Churn {
            held: 3,
            replaced: 0,
            reconnected: 0,
            failed: 0,
            failures: Default::default(),
            unexpected_drops: 0,
            churn_per_sec: None,
            server_cpu_us_per_reconnect: None,
            client_cpu_us_per_reconnect: None,
            tls: None,
        });
        assert_eq!(ramp(&churn), None);
        let flat = Ramp {
            open: vec![(0.0, 0.0)],
            rss_mib: vec![],
        };
        assert_eq!(
            (flat.t_max(), flat.open_max(), flat.rss_max()),
            (1.0, 1.0, 1.0)
        );
    }

    #[test]
    fn finds_latency_distributions() {
        let Results::Connect(mut c) = connect(&[], None) else {
            unreachable!()
        };
        c.handshake_latency = Some(dist(10, 100));
        c.broadcast = Some(BroadcastFigures {
            broadcast_fanout_completion: dist(3, 5000),
            ..BroadcastFigures::default()
        });
        let l = latencies(&Results::Connect(c.clone()));
        let names: Vec<&str> = l.iter().map(|x| x.name.as_str()).collect();
        assert_eq!(names, ["broadcast_fanout_completion", "handshake_latency"]);
        assert_eq!(l[1].values_us, [100.0, 101.0, 102.0, 103.0, 104.0]);
        assert_eq!(l[1].count, Some(10));
        // Empty histograms ({"count": 0}) have nothing to draw.
        c.handshake_latency = Some(Dist::default());
        c.broadcast = None;
        assert!(latencies(&Results::Connect(c)).is_empty());
    }

    #[test]
    fn axes_and_labels() {
        assert_eq!(log_bounds(120.0, 4500.0), (10.0, 100_000.0));
        assert_eq!(log_bounds(400.0, 2400.0), (100.0, 10_000.0));
        assert_eq!(log_bounds(0.0, 0.0), (1.0, 10.0));
        assert_eq!(log_bounds(100.0, 100.0), (10.0, 1000.0));
        // Just above a decade: the axis starts a decade lower.
        assert_eq!(
            log_bounds(10_100_000.0, 10_200_000.0),
            (1_000_000.0, 100_000_000.0)
        );
        assert_eq!(fmt_us(850.0), "850µs");
        assert_eq!(fmt_us(1500.0), "1.5ms");
        assert_eq!(fmt_us(2_000_000.0), "2s");
        assert_eq!(fmt_count(950.0), "950");
        assert_eq!(fmt_mib(3500.0, 3600.0), "3500");
        assert_eq!(fmt_mib(2.25, 5.0), "2.2");
        assert_eq!(fmt_count(25_000.0), "25k");
        assert_eq!(fmt_count(1_250_000.0), "1.2M");
        assert_eq!(percentile_label(0.0), "p50");
        assert_eq!(percentile_label(3.0), "p99.9");
        assert_eq!(percentile_label(4.0), "max");
        assert_eq!(percentile_label(0.5), "");
        assert_eq!(percentile_label(-1.0), "");
        assert_eq!(percentile_label(5.0), "");
        let Results::Connect(mut c) = connect(&[], None) else {
            unreachable!()
        };
        c.target = 1_000_000;
        assert_eq!(
            title("run", &Results::Connect(c.clone())),
            "run: connect, 1M connections"
        );
        c.target = 0;
        assert_eq!(title("run", &Results::Connect(c)), "run: connect");
    }

    #[test]
    fn output_paths() {
        assert_eq!(
            out_dir(Path::new("bench/results/m.json"), None),
            PathBuf::from("bench/results")
        );
        assert_eq!(out_dir(Path::new("m.json"), None), PathBuf::from("."));
        assert_eq!(
            out_dir(Path::new("a/m.json"), Some(Path::new("charts"))),
            PathBuf::from("charts")
        );
        assert_eq!(
            chart_path(Path::new("d"), "m", "ramp", "svg"),
            PathBuf::from("d/m-ramp.svg")
        );
    }

    #[test]
    fn ramp_chart_marks_every_sample() {
        let dir = std::env::temp_dir().join(format!("wsbench-marks-{}", std::process::id()));
        let doc = connect(
            &[(0.0, 0, 0), (0.1, 120, 0), (0.2, 260, 0), (0.25, 300, 0)],
            None,
        );
        let written = render(&doc, "marks", &dir).unwrap();
        let svg = std::fs::read_to_string(&written[0]).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(svg.matches("<circle").count(), 4, "{svg}");
    }

    #[test]
    fn renders_svg_and_png() {
        let dir = std::env::temp_dir().join(format!("wsbench-charts-{}", std::process::id()));
        let doc = Results::Echo(Echo {
            connections: 10,
            failed_to_open: 0,
            closed_by_server: 0,
            round_trips: 5,
            round_trips_per_sec: None,
            latency: Dist {
                count: 5,
                percentiles: Some(Percentiles {
                    p50_us: 90,
                    p90_us: 150,
                    p99_us: 900,
                    p999_us: 2000,
                    max_us: 2100,
                    mean_us: 120.0,
                }),
            },
            server_cpu_us_per_round_trip: None,
            client_cpu_us_per_round_trip: None,
            tls: None,
        });
        let written = render(&doc, "unit", &dir).unwrap();
        assert_eq!(
            written,
            vec![
                chart_path(&dir, "unit", "latency", "svg"),
                chart_path(&dir, "unit", "latency", "png")
            ]
        );
        let svg = std::fs::read_to_string(&written[0]).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("latency (n = 5)"));
        let png = std::fs::read(&written[1]).unwrap();
        assert!(png.starts_with(b"\x89PNG") && png.len() > 5000);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
