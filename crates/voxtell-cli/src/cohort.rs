//! `voxtell predict` over a cohort: the per-part report (`--report`, one JSON line per case,
//! appended and flushed as each case ends, so a killed worker's report holds every case it
//! finished) and re-running the failed cases of earlier reports (`--retry-failed`).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use voxtell::infer::{Batch, CaseRecord, CaseStatus, Job, Part};

/// One line of a report.
#[derive(Debug, Serialize, Deserialize)]
pub struct ReportLine {
    /// The case name.
    pub case: String,
    /// The input (a file or a DICOM series folder).
    pub inputs: Vec<String>,
    /// The case's prompts, so a failed case can be run again from the report alone.
    pub prompts: Vec<String>,
    /// Files written, or present when skipped.
    pub outputs: Vec<String>,
    /// `ok`, `failed`, `skipped` or `cancelled`.
    pub status: String,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Read, predict and write time.
    pub seconds: f64,
    /// Reading the image and preparing it for the network (on the reading thread, beside the
    /// previous case's prediction).
    #[serde(default)]
    pub read_seconds: f64,
    /// Predicting.
    #[serde(default)]
    pub predict_seconds: f64,
    /// Of `predict_seconds`, inside the network's forward passes.
    #[serde(default)]
    pub network_seconds: f64,
    /// Writing (on the writing thread, beside the next case's prediction).
    #[serde(default)]
    pub write_seconds: f64,
    /// The process's peak resident memory so far (bytes; VmHWM), when the system says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss: Option<u64>,
    /// The part (`id/count`), when the run is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<String>,
}

/// The report a run appends to.
pub struct Report {
    path: PathBuf,
    file: Mutex<File>,
    part: Option<Part>,
}

impl Report {
    /// Open (append to) `template` with `{part}` replaced by the part id (`all` for a run that
    /// is not a part); the folder must exist.
    pub fn open(template: &Path, part: Option<Part>) -> anyhow::Result<Report> {
        let id = part.map_or_else(|| "all".to_string(), |p| p.id.to_string());
        let path = PathBuf::from(template.to_string_lossy().replace("{part}", &id));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("--report {}: cannot open it for appending", path.display()))?;
        Ok(Report { path, file: Mutex::new(file), part })
    }

    /// Append the line of a case that ran (written, failed or cancelled) and flush it.
    pub fn record(&self, batch: &Batch, record: &CaseRecord) -> anyhow::Result<()> {
        let Some(case) = batch.cases().get(record.index) else { return Ok(()) };
        let status = match record.status {
            CaseStatus::Written => "ok",
            CaseStatus::Skipped => "skipped",
            CaseStatus::Failed => "failed",
            CaseStatus::Cancelled => "cancelled",
        };
        self.write(ReportLine {
            case: record.name.clone(),
            inputs: vec![record.source.clone()],
            prompts: case.job.prompts.clone(),
            outputs: record.outputs.iter().map(|p| p.display().to_string()).collect(),
            status: status.to_string(),
            error: record.error.clone(),
            seconds: record.read_seconds + record.predict_seconds + record.write_seconds,
            read_seconds: record.read_seconds,
            predict_seconds: record.predict_seconds,
            network_seconds: record.network_seconds,
            write_seconds: record.write_seconds,
            peak_rss: peak_rss(),
            part: self.part.map(|p| format!("{}/{}", p.id, p.count)),
        })
    }

    /// Append a line for every case the batch skips (its outputs all exist).
    pub fn skipped(&self, batch: &Batch) -> anyhow::Result<()> {
        for case in batch.cases().iter().filter(|c| c.skip) {
            self.write(ReportLine {
                case: case.job.name.clone(),
                inputs: vec![case.job.input.describe()],
                prompts: case.job.prompts.clone(),
                // The files present (a writer may write one of several names).
                outputs: case
                    .outputs
                    .iter()
                    .map(|f| batch.options().out_dir.join(f))
                    .filter(|p| p.exists())
                    .map(|p| p.display().to_string())
                    .collect(),
                status: "skipped".to_string(),
                error: None,
                seconds: 0.0,
                read_seconds: 0.0,
                predict_seconds: 0.0,
                network_seconds: 0.0,
                write_seconds: 0.0,
                peak_rss: peak_rss(),
                part: self.part.map(|p| format!("{}/{}", p.id, p.count)),
            })?;
        }
        Ok(())
    }

    fn write(&self, line: ReportLine) -> anyhow::Result<()> {
        let mut text = serde_json::to_string(&line)?;
        text.push('\n');
        let mut file = self.file.lock().map_err(|_| anyhow::anyhow!("the report's lock is poisoned"))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.flush())
            .with_context(|| format!("writing the report {}", self.path.display()))
    }
}

/// The process's peak resident set size (VmHWM in /proc/self/status), in bytes.
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The jobs of the cases whose latest line in `reports` says `failed` (a case that failed and
/// then succeeded in a later run of the same report is not run again).
pub fn failed_jobs(reports: &[PathBuf]) -> anyhow::Result<Vec<Job>> {
    let mut latest: BTreeMap<String, ReportLine> = BTreeMap::new();
    for path in reports {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("--retry-failed {}", path.display()))?;
        for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let line: ReportLine = serde_json::from_str(line).with_context(|| {
                format!("--retry-failed {}: line {} is not a report line", path.display(), n + 1)
            })?;
            latest.insert(format!("{}\u{0}{}", line.case, line.inputs.join("\u{0}")), line);
        }
    }
    let mut jobs = Vec::new();
    for line in latest.into_values().filter(|l| l.status == "failed") {
        let [input] = line.inputs.as_slice() else {
            bail!("--retry-failed: case {} has {} inputs, expected one", line.case, line.inputs.len());
        };
        if line.prompts.is_empty() {
            bail!("--retry-failed: case {} has no prompts in the report", line.case);
        }
        jobs.push(Job::from_path(input, line.prompts));
    }
    Ok(jobs)
}
