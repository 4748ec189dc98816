//! A dependency-free SVG bar chart: panels of grouped bars, one colour per series.
//!
//! SVG because it is text (diffable, renders on any code host and browser) and needs no
//! plotting library or font files at build time.

use std::fmt::Write;

/// One panel: a metric with a value per (group, series), e.g. requests/s per mode and
/// setup. `None` draws no bar (the cell was not measured).
pub struct Panel {
    pub title: String,
    pub unit: String,
    pub groups: Vec<String>,
    pub values: Vec<Vec<Option<f64>>>,
}

const PANEL_W: f64 = 330.0;
const PANEL_H: f64 = 300.0;
const TOP: f64 = 70.0;
const BOTTOM: f64 = 50.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 14.0;
const COLOURS: [&str; 7] = [
    "#1b6ac9", "#74a9e8", "#d9822b", "#2f9e44", "#8fd19e", "#6b7280", "#b0b4ba",
];

/// Renders the panels side by side under `title`, with a legend of `series`.
pub fn grouped_bars(title: &str, subtitle: &str, series: &[&str], panels: &[Panel]) -> String {
    let width = PANEL_W * panels.len() as f64;
    let height = TOP + PANEL_H + BOTTOM;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="DejaVu Sans, Arial, sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r##"<rect width="100%" height="100%" fill="white"/><text x="10" y="20" font-size="15" font-weight="bold">{}</text><text x="10" y="38" fill="#444">{}</text>"##,
        escape(title),
        escape(subtitle)
    );
    // Legend.
    let mut x = 10.0;
    for (i, name) in series.iter().enumerate() {
        let _ = writeln!(
            s,
            r#"<rect x="{x:.0}" y="48" width="12" height="12" fill="{}"/><text x="{:.0}" y="59">{}</text>"#,
            COLOURS[i % COLOURS.len()],
            x + 16.0,
            escape(name)
        );
        x += 16.0 + 8.0 * name.len() as f64 + 20.0;
    }
    for (p, panel) in panels.iter().enumerate() {
        draw_panel(&mut s, PANEL_W * p as f64, panel);
    }
    s.push_str("</svg>\n");
    s
}

fn draw_panel(s: &mut String, x0: f64, panel: &Panel) {
    let plot_h = PANEL_H - 40.0;
    let y_base = TOP + 30.0 + plot_h;
    let plot_w = PANEL_W - LEFT - RIGHT;
    let max = panel
        .values
        .iter()
        .flatten()
        .flatten()
        .copied()
        .fold(0.0_f64, f64::max);
    let scale_max = nice_ceiling(max);
    let _ = writeln!(
        s,
        r#"<text x="{:.0}" y="{:.0}" font-weight="bold" text-anchor="middle">{} ({})</text>"#,
        x0 + LEFT + plot_w / 2.0,
        TOP + 16.0,
        escape(&panel.title),
        escape(&panel.unit)
    );
    // Grid lines and y labels: 0, 1/4, ... of the scale.
    for i in 0..=4 {
        let v = scale_max * i as f64 / 4.0;
        let y = y_base - plot_h * i as f64 / 4.0;
        let _ = writeln!(
            s,
            r##"<line x1="{:.0}" y1="{y:.1}" x2="{:.0}" y2="{y:.1}" stroke="#ddd"/><text x="{:.0}" y="{:.1}" text-anchor="end" fill="#444">{}</text>"##,
            x0 + LEFT,
            x0 + LEFT + plot_w,
            x0 + LEFT - 4.0,
            y + 4.0,
            short(v)
        );
    }
    let groups = panel.groups.len().max(1) as f64;
    let group_w = plot_w / groups;
    for (g, name) in panel.groups.iter().enumerate() {
        let row = &panel.values[g];
        let n = row.len().max(1) as f64;
        let bar_w = (group_w - 16.0) / n;
        let gx = x0 + LEFT + group_w * g as f64 + 8.0;
        for (k, v) in row.iter().enumerate() {
            let Some(v) = v else { continue };
            let h = if scale_max > 0.0 {
                plot_h * v / scale_max
            } else {
                0.0
            };
            let bx = gx + bar_w * k as f64;
            let _ = writeln!(
                s,
                r#"<rect x="{bx:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{}"><title>{}: {}</title></rect><text x="{:.1}" y="{:.1}" font-size="9" text-anchor="middle">{}</text>"#,
                y_base - h,
                bar_w - 2.0,
                COLOURS[k % COLOURS.len()],
                escape(name),
                short(*v),
                bx + (bar_w - 2.0) / 2.0,
                y_base - h - 3.0,
                short(*v)
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.0}" text-anchor="middle">{}</text>"#,
            gx + (group_w - 16.0) / 2.0,
            y_base + 16.0,
            escape(name)
        );
    }
    let _ = writeln!(
        s,
        r##"<line x1="{:.0}" y1="{y_base:.0}" x2="{:.0}" y2="{y_base:.0}" stroke="#222"/>"##,
        x0 + LEFT,
        x0 + LEFT + plot_w
    );
}

/// 1, 2, 2.5 or 5 times a power of ten, at least `v`.
fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|c| *c >= v)
        .unwrap_or(10.0 * p)
}

/// A compact label: 12.3k, 1.5M, 0.42.
fn short(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_and_labels() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(7.0), 10.0);
        assert_eq!(nice_ceiling(12_300.0), 20_000.0);
        assert_eq!(nice_ceiling(2_400.0), 2_500.0);
        assert_eq!(short(12_345.0), "12.3k");
        assert_eq!(short(0.4242), "0.42");
        assert_eq!(short(250.0), "250");
    }

    #[test]
    fn svg_has_a_bar_per_measured_cell() {
        let svg = grouped_bars(
            "t",
            "s",
            &["a", "b"],
            &[Panel {
                title: "rps".into(),
                unit: "1/s".into(),
                groups: vec!["keep-alive".into(), "new <conn>".into()],
                values: vec![vec![Some(1.0), Some(2.0)], vec![Some(3.0), None]],
            }],
        );
        assert_eq!(svg.matches("<rect x=").count(), 2 + 3);
        assert!(svg.contains("new &lt;conn&gt;"));
        assert!(svg.ends_with("</svg>\n"));
    }
}
