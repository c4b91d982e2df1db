//! SVG charts (plotters, SVG backend only): per-host traffic share, failed
//! share and the bad host's state over time, one panel per variant.

use std::path::Path;

use plotters::prelude::*;

use crate::incidents::{Outcome, Scenario, StateChange};

fn state_color(s: &str) -> RGBColor {
    match s {
        "Healthy" => RGBColor(200, 230, 200),
        "Degraded" => RGBColor(255, 190, 90),
        "WarmingUp" => RGBColor(150, 190, 240),
        _ => RGBColor(220, 60, 60), // Unhealthy, Ejected
    }
}

/// Spans `(from_s, to_s, state)` of `host`, Healthy before the first change.
pub fn spans(changes: &[StateChange], host: usize, end_s: f64) -> Vec<(f64, f64, String)> {
    let mut cs: Vec<&StateChange> = changes.iter().filter(|c| c.host == host).collect();
    cs.sort_by_key(|c| c.t_ms);
    let mut out = Vec::new();
    let mut from = 0.0;
    let mut state = "Healthy".to_string();
    for c in cs {
        let t = (c.t_ms as f64 / 1000.0).clamp(0.0, end_s);
        if t > from {
            out.push((from, t, state.clone()));
        }
        from = t;
        state = c.state.clone();
    }
    if end_s > from {
        out.push((from, end_s, state));
    }
    out
}

pub fn render(path: &Path, sc: &Scenario, panels: &[&Outcome]) -> Result<(), String> {
    let h = 300 * panels.len() as u32 + 40;
    let root = SVGBackend::new(path, (960, h)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (title, body) = root.split_vertically(40);
    title
        .titled(
            &format!(
                "({}) {}: traffic share per host and failed requests, per second",
                sc.key, sc.title
            ),
            ("sans-serif", 18),
        )
        .map_err(|e| e.to_string())?;
    let areas = body.split_evenly((panels.len(), 1));
    let bad = sc.bad.unwrap_or(1);
    let colors = [
        RGBColor(31, 119, 180),
        RGBColor(148, 0, 211),
        RGBColor(44, 160, 44),
    ];
    for (area, o) in areas.iter().zip(panels) {
        let end = sc.duration_s;
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!("{}: {} failed of {}", o.label, o.failed, o.requests),
                ("sans-serif", 15),
            )
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(44)
            .build_cartesian_2d(0f64..end * 1.24, 0f64..112f64)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("seconds (the bar on top: u2's state)")
            .x_label_formatter(&|x| {
                if *x <= end {
                    format!("{x:.0}")
                } else {
                    String::new()
                }
            })
            .y_desc("% of requests")
            .y_labels(6)
            .draw()
            .map_err(|e| e.to_string())?;
        for (from, to, st) in spans(&o.states, bad, end) {
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(from, 103.0), (to, 111.0)],
                    state_color(&st).filled(),
                )))
                .map_err(|e| e.to_string())?;
        }
        let pct = |n: u32, t: u32| {
            if t == 0 {
                0.0
            } else {
                f64::from(n) * 100.0 / f64::from(t)
            }
        };
        for (i, c) in colors.iter().enumerate() {
            let pts = o
                .seconds
                .iter()
                .enumerate()
                .map(|(s, b)| (s as f64 + 0.5, pct(b.by_host[i], b.total)));
            let style = if i == bad {
                c.stroke_width(3)
            } else {
                c.stroke_width(1)
            };
            chart
                .draw_series(LineSeries::new(pts, style))
                .map_err(|e| e.to_string())?
                .label(format!(
                    "u{} share{}",
                    i + 1,
                    if i == bad { " (bad host)" } else { "" }
                ))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2))
                });
        }
        let fail = o
            .seconds
            .iter()
            .enumerate()
            .map(|(s, b)| (s as f64 + 0.5, pct(b.failed, b.total)));
        chart
            .draw_series(LineSeries::new(fail, RED.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label("failed")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RED.stroke_width(2)));
        for st in ["Healthy", "Degraded", "WarmingUp", "Unhealthy"] {
            let c = state_color(st);
            chart
                .draw_series(std::iter::empty::<Rectangle<(f64, f64)>>())
                .map_err(|e| e.to_string())?
                .label(format!(
                    "u{} {}",
                    bad + 1,
                    if st == "Unhealthy" { "ejected" } else { st }
                ))
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 16, y + 5)], c.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 11))
            .draw()
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_cover_the_run() {
        let ch = vec![
            StateChange {
                t_ms: 5000,
                host: 1,
                state: "Unhealthy".into(),
            },
            StateChange {
                t_ms: 35000,
                host: 1,
                state: "WarmingUp".into(),
            },
            StateChange {
                t_ms: 6000,
                host: 0,
                state: "Degraded".into(),
            },
        ];
        let s = spans(&ch, 1, 60.0);
        assert_eq!(s.len(), 3);
        assert_eq!((s[0].0, s[0].1, s[0].2.as_str()), (0.0, 5.0, "Healthy"));
        assert_eq!((s[2].0, s[2].1, s[2].2.as_str()), (35.0, 60.0, "WarmingUp"));
    }
}
