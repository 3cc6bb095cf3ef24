//! What loadgen prints and writes: a percentile table, JSON, the HdrHistogram percentile
//! distribution text (`.hgrm`), and an SVG plot of the latency distribution.

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::path::Path;

pub const QUANTILES: [(f64, &str); 6] = [
    (0.5, "p50"),
    (0.9, "p90"),
    (0.99, "p99"),
    (0.999, "p99.9"),
    (0.9999, "p99.99"),
    (1.0, "max"),
];

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

pub fn percentiles(h: &Histogram<u64>) -> Value {
    let mut m = serde_json::Map::new();
    m.insert("count".into(), h.len().into());
    for (q, name) in QUANTILES {
        let v = if q >= 1.0 {
            h.max()
        } else {
            h.value_at_quantile(q)
        };
        m.insert(format!("{name}_ms"), json!(ms(v)));
    }
    m.insert("mean_ms".into(), json!(h.mean() / 1000.0));
    Value::Object(m)
}

/// The percentile table: one row per histogram, values in milliseconds.
pub fn table(rows: &[(&str, &Histogram<u64>)]) -> String {
    let mut out = String::new();
    let _ = write!(out, "{:<26}{:>10}", "latency (ms)", "count");
    for (_, name) in QUANTILES {
        let _ = write!(out, "{name:>10}");
    }
    out.push('\n');
    for (label, h) in rows {
        let _ = write!(out, "{label:<26}{:>10}", h.len());
        for (q, _) in QUANTILES {
            let v = if q >= 1.0 {
                h.max()
            } else {
                h.value_at_quantile(q)
            };
            if h.is_empty() {
                let _ = write!(out, "{:>10}", "-");
            } else {
                let _ = write!(out, "{:>10.3}", ms(v));
            }
        }
        out.push('\n');
    }
    out
}

/// The standard HdrHistogram percentile distribution output, values in milliseconds.
pub fn hgrm(h: &Histogram<u64>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    for v in h.iter_quantiles(5) {
        let q = v.quantile_iterated_to();
        let inv = if q < 1.0 {
            format!("{:>14.2}", 1.0 / (1.0 - q))
        } else {
            format!("{:>14}", "")
        };
        let _ = writeln!(
            out,
            "{:>12.3} {:>14.12} {:>10} {inv}",
            ms(v.value_iterated_to()),
            q,
            v.count_since_last_iteration()
        );
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]",
        h.mean() / 1000.0,
        h.stdev() / 1000.0
    );
    let _ = writeln!(
        out,
        "#[Max     = {:>12.3}, Total count    = {:>12}]",
        ms(h.max()),
        h.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        h.buckets(),
        h.distinct_values()
    );
    out
}

/// Latency by percentile on a "nines" axis (50%, 90%, 99%, …), one line per histogram.
pub fn plot(path: &Path, title: &str, series: &[(&str, &Histogram<u64>)]) -> Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).context("plot")?;
    let points: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|(_, h)| {
            h.iter_quantiles(5)
                .map(|v| {
                    let q = v.quantile_iterated_to().min(0.999_999);
                    (-(1.0 - q).log10(), ms(v.value_iterated_to()))
                })
                .collect()
        })
        .collect();
    let ymax = points.iter().flatten().map(|p| p.1).fold(0.001, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..6.0, 0.0..ymax)
        .context("plot")?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_label_formatter(&|x| format!("{:.4}%", 100.0 * (1.0 - 10f64.powf(-x))))
        .draw()
        .context("plot")?;
    let colors = [&BLUE, &RED, &GREEN, &MAGENTA];
    for (i, ((label, _), pts)) in series.iter().zip(points).enumerate() {
        let color = colors[i % colors.len()];
        chart
            .draw_series(LineSeries::new(pts, color))
            .context("plot")?
            .label(*label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .context("plot")?;
    root.present().context("writing the plot")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_and_hgrm() {
        let mut h = crate::stats::histogram();
        for v in 1..=10_000u64 {
            crate::stats::record(&mut h, v);
        }
        let t = table(&[("delivery", &h)]);
        assert!(t.contains("p99.99"));
        assert!(t.lines().nth(1).unwrap().contains("10000"));
        let g = hgrm(&h);
        assert!(g.starts_with("       Value"));
        assert!(g.contains("#[Max     ="));
        let dir = std::env::temp_dir().join(format!("loadgen-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        plot(&dir.join("p.svg"), "test", &[("delivery", &h)]).unwrap();
        assert!(std::fs::read_to_string(dir.join("p.svg"))
            .unwrap()
            .contains("<svg"));
    }
}
