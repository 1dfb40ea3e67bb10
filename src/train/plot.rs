//! The loss curve of a run as a small standalone SVG (train loss line, val loss points).

use std::fmt::Write;
use std::path::Path;

use crate::error::{Error, Result};
use crate::train::LogRecord;

const W: f64 = 640.0;
const H: f64 = 360.0;
const PAD_L: f64 = 56.0;
const PAD_R: f64 = 16.0;
const PAD_T: f64 = 28.0;
const PAD_B: f64 = 40.0;

/// Read `metrics` (metrics.jsonl) and write the loss curve to `svg` atomically. Lines that are
/// not records are skipped; with no finite loss at all nothing is written.
pub fn write_loss_curve(metrics: &Path, svg: &Path) -> Result<()> {
    let text = std::fs::read_to_string(metrics).map_err(|source| Error::Io {
        path: metrics.to_path_buf(),
        source,
    })?;
    let records: Vec<LogRecord> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    if let Some(doc) = loss_curve_svg(&records) {
        crate::fsio::write_atomic(svg, doc.as_bytes())?;
    }
    Ok(())
}

/// The SVG document for `records`, or `None` when there is no finite loss to draw.
pub fn loss_curve_svg(records: &[LogRecord]) -> Option<String> {
    let train: Vec<(f64, f64)> = records
        .iter()
        .filter(|r| r.loss.is_finite())
        .map(|r| (r.step as f64, r.loss as f64))
        .collect();
    let val: Vec<(f64, f64)> = records
        .iter()
        .filter_map(|r| Some((r.step as f64, r.val_loss.filter(|v| v.is_finite())? as f64)))
        .collect();
    let all = train.iter().chain(&val);
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in all {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        return None;
    }
    if x1 - x0 < 1.0 {
        x1 = x0 + 1.0;
    }
    let margin = ((y1 - y0) * 0.05).max(1e-3);
    (y0, y1) = (y0 - margin, y1 + margin);
    let px = |x: f64| PAD_L + (x - x0) / (x1 - x0) * (W - PAD_L - PAD_R);
    let py = |y: f64| PAD_T + (y1 - y) / (y1 - y0) * (H - PAD_T - PAD_B);

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let (left, right, top, bottom) = (PAD_L, W - PAD_R, PAD_T, H - PAD_B);
    let _ = writeln!(
        s,
        r#"<path d="M{left},{top} L{left},{bottom} L{right},{bottom}" fill="none" stroke="black"/>"#
    );
    for i in 0..=4 {
        let y = y0 + (y1 - y0) * i as f64 / 4.0;
        let x = x0 + (x1 - x0) * i as f64 / 4.0;
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}" text-anchor="end">{y:.3}</text><line x1="{left}" x2="{right}" y1="{py}" y2="{py}" stroke="#ddd"/>"##,
            left - 6.0,
            py(y) + 4.0,
            py = py(y)
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{x:.0}</text>"#,
            px(x),
            bottom + 16.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">step</text>"#,
        (left + right) / 2.0,
        H - 6.0
    );
    let points: Vec<String> = train
        .iter()
        .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
        .collect();
    let _ = writeln!(
        s,
        r##"<polyline points="{}" fill="none" stroke="#1f77b4" stroke-width="1.5"/>"##,
        points.join(" ")
    );
    for &(x, y) in &val {
        let _ = writeln!(
            s,
            r##"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="#d62728"/>"##,
            px(x),
            py(y)
        );
    }
    let _ = writeln!(
        s,
        r##"<text x="{left}" y="18" fill="#1f77b4">train loss</text><text x="{}" y="18" fill="#d62728">● val loss</text>"##,
        left + 90.0
    );
    s.push_str("</svg>\n");
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(step: u64, loss: f32, val: Option<f32>) -> LogRecord {
        LogRecord {
            step,
            epoch: 0.0,
            loss,
            lr: 1e-3,
            grad_norm: 1.0,
            tokens_per_sec: 1.0,
            gpu_bytes: 0,
            val_loss: val,
            val_perplexity: val.map(f32::exp),
        }
    }

    #[test]
    fn draws_train_line_and_val_points() {
        let svg = loss_curve_svg(&[
            rec(1, 3.0, None),
            rec(2, 2.0, Some(2.5)),
            rec(3, f32::NAN, None),
        ])
        .unwrap();
        assert!(svg.starts_with("<svg"));
        assert_eq!(svg.matches("<circle").count(), 1);
        let line = svg.lines().find(|l| l.starts_with("<polyline")).unwrap();
        assert_eq!(
            line.matches(',').count(),
            2,
            "NaN losses are left out: {line}"
        );
        assert!(loss_curve_svg(&[rec(1, f32::NAN, None)]).is_none());
    }
}
