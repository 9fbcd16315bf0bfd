//! Charts as inline SVG, rendered on the server.
//!
//! Pages stay light and work without script, and the strict Content-Security-Policy holds:
//! the SVG uses presentation attributes and CSS classes, never inline styles. Series are
//! told apart by colour *and* by dash pattern and a text legend, so they read without
//! colour vision too. Every chart carries a text summary (`<title>`/`<desc>`) for screen
//! readers, and a table of the same numbers sits next to it on the page.

use std::fmt::Write as _;

use maud::Render;

/// Text escaped for HTML and SVG, by the same code maud uses for the pages.
pub(super) fn escape_html(text: &str) -> String {
    text.render().into_string()
}

/// One named series of values, one per x slot.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend label.
    pub name: String,
    /// Values in x order; all series have the same length.
    pub values: Vec<f64>,
}

/// A chart to draw.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    /// Accessible title.
    pub title: String,
    /// Label of each x slot (shown for a few evenly spaced slots).
    pub x_labels: Vec<String>,
    /// One line per series, or the first series as bars.
    pub series: Vec<Series>,
    /// Unit shown after the maximum on the y axis (e.g. "events", "ms").
    pub unit: String,
}

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 220.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 28.0;

/// Dash patterns, paired with the colour classes `s0`..`s5` in the stylesheet.
const DASHES: [&str; 6] = ["", "6 3", "2 3", "8 3 2 3", "1 2", "10 4"];

/// A round number at or above `max` for the top of the y axis (1, 2, 5 × 10ⁿ).
pub fn nice_ceiling(max: f64) -> f64 {
    if !max.is_finite() || max <= 0.0 {
        return 1.0;
    }
    let exp = max.log10().floor();
    let base = 10f64.powf(exp);
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * base >= max {
            return m * base;
        }
    }
    10.0 * base
}

fn format_value(v: f64) -> String {
    if v >= 1_000_000.0 {
        format!("{:.1}M", v / 1_000_000.0)
    } else if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Where values land in the plot area: one slot per x label, y scaled to a round top.
struct Frame {
    slots: usize,
    top: f64,
    step: f64,
    plot_h: f64,
}

impl Frame {
    fn new(labels: usize, max: f64) -> Self {
        let slots = labels.max(1);
        Self {
            slots,
            // At least 2, so the midline of a small integer chart is a whole number.
            top: nice_ceiling(max).max(2.0),
            step: (WIDTH - LEFT - RIGHT) / slots as f64,
            plot_h: HEIGHT - TOP - BOTTOM,
        }
    }

    fn x_of(&self, i: usize) -> f64 {
        LEFT + self.step * (i as f64 + 0.5)
    }

    fn y_of(&self, v: f64) -> f64 {
        TOP + self.plot_h * (1.0 - (v / self.top).clamp(0.0, 1.0))
    }
}

impl Chart {
    /// Renders lines (several series) or bars (one series) as an SVG element.
    pub fn to_svg(&self, bars: bool) -> String {
        let max = self
            .series
            .iter()
            .flat_map(|s| s.values.iter().copied())
            .fold(0.0f64, f64::max);
        let frame = Frame::new(self.x_labels.len(), max);
        let mut svg = String::with_capacity(4096);
        let total: f64 = self.series.iter().flat_map(|s| s.values.iter()).sum();
        let _ = write!(
            svg,
            r#"<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img"><title>{}</title><desc>{} in {} slots, total {}, highest {}</desc>"#,
            escape_html(&self.title),
            escape_html(&self.unit),
            frame.slots,
            format_value(total),
            format_value(max),
        );
        self.axes(&frame, &mut svg);
        if bars {
            self.bars(&frame, &mut svg);
        } else {
            self.lines(&frame, &mut svg);
        }
        svg.push_str("</svg>");
        svg
    }

    /// Grid lines and y labels at zero, half and top; at most 8 x labels, evenly spaced.
    fn axes(&self, frame: &Frame, svg: &mut String) {
        for frac in [0.0, 0.5, 1.0] {
            let y = frame.y_of(frame.top * frac);
            let _ = write!(
                svg,
                r#"<line class="grid" x1="{LEFT}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}"/><text class="axis" x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                WIDTH - RIGHT,
                LEFT - 6.0,
                y + 4.0,
                format_value(frame.top * frac),
            );
        }
        let every = frame.slots.div_ceil(8).max(1);
        for (i, label) in self.x_labels.iter().enumerate() {
            if i % every == 0 {
                let _ = write!(
                    svg,
                    r#"<text class="axis" x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                    frame.x_of(i),
                    HEIGHT - 8.0,
                    escape_html(label)
                );
            }
        }
    }

    /// The first series as bars, each with its value as a tooltip.
    fn bars(&self, frame: &Frame, svg: &mut String) {
        let Some(s) = self.series.first() else {
            return;
        };
        let w = (frame.step * 0.8).max(1.0);
        for (i, v) in s.values.iter().enumerate() {
            let y = frame.y_of(*v);
            let label = self.x_labels.get(i).map(String::as_str).unwrap_or("");
            let _ = write!(
                svg,
                r#"<rect class="bar" x="{:.1}" y="{y:.1}" width="{w:.1}" height="{:.1}"><title>{}: {} {}</title></rect>"#,
                frame.x_of(i) - w / 2.0,
                (TOP + frame.plot_h - y).max(0.0),
                escape_html(label),
                format_value(*v),
                escape_html(&self.unit),
            );
        }
    }

    /// Every series as a line, told apart by colour and dash pattern.
    fn lines(&self, frame: &Frame, svg: &mut String) {
        for (n, s) in self.series.iter().enumerate() {
            let mut points = String::with_capacity(s.values.len() * 12);
            for (i, v) in s.values.iter().enumerate() {
                let _ = write!(points, "{:.1},{:.1} ", frame.x_of(i), frame.y_of(*v));
            }
            let dash = DASHES[n % DASHES.len()];
            let _ = write!(
                svg,
                r#"<polyline class="line s{}" points="{}"{}><title>{}</title></polyline>"#,
                n % DASHES.len(),
                points.trim_end(),
                if dash.is_empty() {
                    String::new()
                } else {
                    format!(r#" stroke-dasharray="{dash}""#)
                },
                escape_html(&s.name),
            );
        }
    }

    /// The legend: each series' name with a swatch in its colour and dash pattern.
    pub fn legend(&self) -> String {
        let mut out = String::from(r#"<ul class="legend">"#);
        for (n, s) in self.series.iter().enumerate() {
            let dash = DASHES[n % DASHES.len()];
            let total: f64 = s.values.iter().sum();
            let _ = write!(
                out,
                r#"<li><svg class="swatch" viewBox="0 0 24 8" aria-hidden="true"><line class="line s{}" x1="0" x2="24" y1="4" y2="4"{}/></svg>{} <span class="muted">({})</span></li>"#,
                n % DASHES.len(),
                if dash.is_empty() {
                    String::new()
                } else {
                    format!(r#" stroke-dasharray="{dash}""#)
                },
                escape_html(&s.name),
                format_value(total),
            );
        }
        out.push_str("</ul>");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_are_round() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(3.0), 5.0);
        assert_eq!(nice_ceiling(10.0), 10.0);
        assert_eq!(nice_ceiling(11.0), 20.0);
        assert_eq!(nice_ceiling(4200.0), 5000.0);
    }

    #[test]
    fn svg_escapes_names_and_has_no_inline_style() {
        let c = Chart {
            title: "a <b>".into(),
            x_labels: vec!["1".into(), "2".into()],
            series: vec![
                Series {
                    name: "x\"<script>".into(),
                    values: vec![1.0, 3.0],
                },
                Series {
                    name: "y".into(),
                    values: vec![0.0, 2.0],
                },
            ],
            unit: "events".into(),
        };
        let svg = c.to_svg(false);
        assert!(!svg.contains("<script>") && svg.contains("&lt;script&gt;"));
        assert!(!svg.contains("style="));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("stroke-dasharray=\"6 3\""));
        assert!(c.legend().contains("(4)"));
        let bars = Chart {
            series: vec![c.series[0].clone()],
            ..c
        }
        .to_svg(true);
        assert_eq!(bars.matches("<rect").count(), 2);
    }

    #[test]
    fn bar_height_is_proportional() {
        let c = Chart {
            title: "t".into(),
            x_labels: vec!["a".into(), "b".into()],
            series: vec![Series {
                name: "s".into(),
                values: vec![5.0, 10.0],
            }],
            unit: "ms".into(),
        };
        let svg = c.to_svg(true);
        let heights: Vec<f64> = svg
            .split("height=\"")
            .skip(1)
            .filter_map(|s| s.split('"').next()?.parse().ok())
            .collect();
        assert_eq!(heights.len(), 2);
        assert!((heights[1] - 2.0 * heights[0]).abs() < 0.2, "{heights:?}");
    }
}
