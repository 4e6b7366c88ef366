//! The training log (one JSON object per epoch) and the PNG of its curves: training and
//! validation loss on the left, mean validation Dice on the right, against the epoch.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};
use voxtell_infer::preview::{Canvas, TEXT_CHAR_WIDTH, TEXT_LINE_HEIGHT};

use crate::error::{Result, TrainError};

/// What one epoch did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochLog {
    /// Epoch index (0-based).
    pub epoch: usize,
    /// Learning rate of the epoch.
    pub lr: f64,
    /// Mean training loss over the epoch's iterations.
    pub train_loss: f64,
    /// Mean validation loss, when validated.
    pub val_loss: Option<f64>,
    /// Mean validation Dice over prompts with a non-empty target, when validated.
    pub val_dice: Option<f64>,
    /// Validation Dice per prompt (default names).
    #[serde(default)]
    pub val_dice_per_prompt: BTreeMap<String, f64>,
    /// Wall time of the epoch in seconds.
    pub seconds: f64,
}

/// Append one epoch to a JSON-lines log.
pub fn append_log(path: &Path, entry: &EpochLog) -> Result<()> {
    let line = log_line(entry).map_err(|reason| TrainError::File { path: path.to_path_buf(), reason })?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| TrainError::File { path: path.to_path_buf(), reason: e.to_string() })?;
    writeln!(f, "{line}").map_err(|e| TrainError::File { path: path.to_path_buf(), reason: e.to_string() })
}

/// One line of the log (without its newline).
pub(crate) fn log_line(entry: &EpochLog) -> std::result::Result<String, String> {
    serde_json::to_string(entry).map_err(|e| format!("cannot serialise the log entry: {e}"))
}

/// Read a JSON-lines log (a torn last line, from a run killed while writing it, is skipped).
pub fn read_log(path: &Path) -> Result<Vec<EpochLog>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(TrainError::File { path: path.to_path_buf(), reason: e.to_string() }),
    };
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut out = Vec::with_capacity(lines.len());
    for (i, l) in lines.iter().enumerate() {
        match serde_json::from_str(l) {
            Ok(e) => out.push(e),
            Err(_) if i + 1 == lines.len() => break,
            Err(e) => {
                return Err(TrainError::File {
                    path: path.to_path_buf(),
                    reason: format!("line {}: {e}", i + 1),
                });
            }
        }
    }
    Ok(out)
}

const TRAIN: [u8; 3] = [90, 160, 255];
const VAL: [u8; 3] = [255, 150, 60];
const DICE: [u8; 3] = [110, 220, 110];
const AXES: [u8; 3] = [170, 170, 170];
const GRID: [u8; 3] = [45, 45, 45];
const TEXT: [u8; 3] = [230, 230, 230];

/// Render the curves of `log` and write them as a PNG.
pub fn write_curves(path: &Path, log: &[EpochLog]) -> Result<()> {
    let (w, h) = (1000usize, 420usize);
    let mut canvas = Canvas::new(w, h);
    let panel_w = w / 2;
    let epochs: Vec<f64> = log.iter().map(|e| e.epoch as f64).collect();
    let train: Vec<f64> = log.iter().map(|e| e.train_loss).collect();
    let val: Vec<Option<f64>> = log.iter().map(|e| e.val_loss).collect();
    let dice: Vec<Option<f64>> = log.iter().map(|e| e.val_dice).collect();
    let losses: Vec<f64> =
        train.iter().copied().chain(val.iter().flatten().copied()).filter(|v| v.is_finite()).collect();
    let (lo, hi) = range(&losses);
    plot_panel(
        &mut canvas,
        (0, 0, panel_w, h),
        "loss",
        &epochs,
        (lo, hi),
        &[("train", TRAIN, train.iter().map(|v| Some(*v)).collect()), ("validation", VAL, val)],
    );
    plot_panel(
        &mut canvas,
        (panel_w, 0, panel_w, h),
        "validation Dice",
        &epochs,
        (0.0, 1.0),
        &[("mean Dice", DICE, dice)],
    );
    canvas
        .write_png(path, true)
        .map_err(|e| TrainError::File { path: path.to_path_buf(), reason: e.to_string() })
}

fn range(values: &[f64]) -> (f64, f64) {
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 { (lo - 0.5, hi + 0.5) } else { (lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo)) }
}

type Series<'a> = (&'a str, [u8; 3], Vec<Option<f64>>);

fn plot_panel(
    canvas: &mut Canvas,
    (x0, y0, w, h): (usize, usize, usize, usize),
    title: &str,
    epochs: &[f64],
    (lo, hi): (f64, f64),
    series: &[Series<'_>],
) {
    let (left, right, top, bottom) = (x0 + 80, x0 + w - 20, y0 + 40, y0 + h - 50);
    canvas.text(x0 + (w - title.len() * TEXT_CHAR_WIDTH) / 2, y0 + 10, title, TEXT);
    let (e0, e1) = match (epochs.first(), epochs.last()) {
        (Some(&a), Some(&b)) if b > a => (a, b),
        (Some(&a), _) => (a - 0.5, a + 0.5),
        _ => (0.0, 1.0),
    };
    let px = |e: f64| left as f64 + (e - e0) / (e1 - e0) * (right - left) as f64;
    let py = |v: f64| bottom as f64 - (v - lo) / (hi - lo) * (bottom - top) as f64;
    // Grid and tick labels: 5 horizontal lines.
    for i in 0..=4 {
        let v = lo + (hi - lo) * i as f64 / 4.0;
        let y = py(v).round() as i64;
        canvas.line((left as i64, y), (right as i64, y), GRID);
        let label = format!("{v:.3}");
        canvas.text(x0 + 4, (y - 7).max(0) as usize, &label, AXES);
    }
    canvas.line((left as i64, top as i64), (left as i64, bottom as i64), AXES);
    canvas.line((left as i64, bottom as i64), (right as i64, bottom as i64), AXES);
    let e_label = format!("epoch {e0:.0} .. {e1:.0}");
    canvas.text(left, bottom + 8, &e_label, AXES);
    for (k, (name, colour, values)) in series.iter().enumerate() {
        let mut prev: Option<(i64, i64)> = None;
        for (e, v) in epochs.iter().zip(values) {
            // Epochs without a value (validation every few epochs) are skipped: the line
            // bridges them.
            if let Some(v) = v.filter(|v| v.is_finite()) {
                let p = (px(*e).round() as i64, py(v.clamp(lo, hi)).round() as i64);
                if let Some(q) = prev {
                    canvas.line(q, p, *colour);
                } else {
                    canvas.fill_rect((p.0 - 1).max(0) as usize, (p.1 - 1).max(0) as usize, 3, 3, *colour);
                }
                prev = Some(p);
            }
        }
        // Legend in the plot's top right corner.
        let lx = right.saturating_sub(16 + 12 * TEXT_CHAR_WIDTH);
        let ly = top + 6 + TEXT_LINE_HEIGHT * k;
        canvas.fill_rect(lx, ly + 2, 10, 10, *colour);
        canvas.text(lx + 16, ly, name, TEXT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(epoch: usize, loss: f64, dice: Option<f64>) -> EpochLog {
        EpochLog {
            epoch,
            lr: 0.01,
            train_loss: loss,
            val_loss: dice.map(|_| loss * 1.1),
            val_dice: dice,
            val_dice_per_prompt: BTreeMap::new(),
            seconds: 1.0,
        }
    }

    #[test]
    fn log_round_trip_skips_a_torn_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        append_log(&path, &entry(0, 1.0, None)).unwrap();
        append_log(&path, &entry(1, 0.5, Some(0.3))).unwrap();
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        write!(f, "{{\"epoch\": 2, \"lr\"").unwrap();
        let log = read_log(&path).unwrap();
        assert_eq!(log, vec![entry(0, 1.0, None), entry(1, 0.5, Some(0.3))]);
        assert!(read_log(&dir.path().join("missing.jsonl")).unwrap().is_empty());
    }

    #[test]
    fn curves_render_with_gaps_and_single_epochs() {
        let dir = tempfile::tempdir().unwrap();
        let log: Vec<EpochLog> = (0..20)
            .map(|e| entry(e, 1.0 / (1.0 + e as f64), (e % 3 == 0).then_some(e as f64 / 20.0)))
            .collect();
        let path = dir.path().join("curves.png");
        write_curves(&path, &log).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        write_curves(&path, &log[..1]).unwrap();
        write_curves(&path, &[]).unwrap();
    }
}
