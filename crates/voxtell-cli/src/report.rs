//! What `voxtell predict` shows while a batch runs: messages by verbosity, the batch's events as
//! a progress bar on a terminal or a line every quarter elsewhere, and errors in the command's
//! words (its flags where the library names an option).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use voxtell::infer::{CaseStatus, Event, human_bytes};

/// Messages by verbosity.
pub struct Log {
    /// Print only errors.
    pub quiet: bool,
    /// Print more.
    pub verbose: bool,
}

impl Log {
    /// A line unless quiet.
    pub fn info(&self, msg: String) {
        if !self.quiet {
            eprintln!("{msg}");
        }
    }

    /// A line when verbose.
    pub fn verbose(&self, msg: String) {
        if self.verbose {
            eprintln!("{msg}");
        }
    }
}

/// Lines about a case found before its "wrote" line (e.g. a voxel spacing the model was not
/// trained on, seen when the case is read ahead), keyed by case name; [`Progress`] prints them with
/// the case's "wrote" or error line.
#[derive(Debug, Default)]
pub struct CaseNotes(Mutex<HashMap<String, Vec<String>>>);

impl CaseNotes {
    /// Add a line about case `name`.
    pub fn add(&self, name: &str, line: String) {
        if let Ok(mut notes) = self.0.lock() {
            notes.entry(name.to_string()).or_default().push(line);
        }
    }

    /// The lines about case `name`, removed.
    pub fn take(&self, name: &str) -> Vec<String> {
        self.0.lock().ok().and_then(|mut notes| notes.remove(name)).unwrap_or_default()
    }
}

/// The batch's events on stderr: a progress bar on a terminal, else a line every quarter.
pub struct Progress<'a> {
    log: &'a Log,
    /// Cases that will run (skipped ones are not counted).
    pending: usize,
    state: Mutex<State>,
    /// Lines the writers left about each case.
    notes: Option<Arc<CaseNotes>>,
}

/// The case being predicted.
#[derive(Default)]
struct State {
    /// The position of the case being predicted.
    case: Option<usize>,
    /// How many cases have started.
    number: usize,
    label: String,
    bar: Option<ProgressBar>,
    started: Option<Instant>,
    next_line: f64,
}

impl<'a> Progress<'a> {
    /// Progress of `pending` cases shown through `log`.
    pub fn new(log: &'a Log, pending: usize) -> Self {
        Progress { log, pending, state: Mutex::new(State::default()), notes: None }
    }

    /// Also print the lines `notes` holds about a case when it is written or fails (unless
    /// quiet).
    pub fn with_notes(self, notes: Arc<CaseNotes>) -> Self {
        Progress { notes: Some(notes), ..self }
    }

    /// Print the notes about case `name` above the progress bar.
    fn print_notes(&self, s: &State, name: &str) {
        let Some(notes) = &self.notes else { return };
        for line in notes.take(name) {
            if !self.log.quiet {
                print_above(s, &line);
            }
        }
    }

    /// Show one event of the batch.
    pub fn show(&self, event: &Event<'_>) {
        let log = self.log;
        let Ok(mut s) = self.state.lock() else { return };
        match event {
            Event::Started { case, name, .. } => {
                *s = State {
                    case: Some(*case),
                    number: s.number + 1,
                    label: format!("[{}/{}] {name}", s.number + 1, self.pending),
                    started: Some(Instant::now()),
                    next_line: 0.25,
                    bar: None,
                };
            }
            Event::Planned { name, plan, groups, .. } => {
                if plan.passes > 1 {
                    log.info(format!(
                        "{name}: memory budget {}: running the {} prompts in {} groups of ≤ {} (the encoder runs once per group)",
                        human_bytes(plan.budget_bytes),
                        groups.iter().map(|g| g.len()).sum::<usize>(),
                        plan.passes,
                        plan.prompt_group
                    ));
                }
                log.verbose(format!("{name}: {plan:?}"));
                if !log.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                    let bar = ProgressBar::new((plan.tiles * plan.passes) as u64);
                    bar.set_style(
                        ProgressStyle::with_template(
                            "{msg} [{bar:30}] {pos}/{len} tiles, {elapsed_precise} elapsed, ETA {eta}",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                    );
                    bar.set_message(s.label.clone());
                    s.bar = Some(bar);
                }
            }
            Event::Tile { group, groups, done, total, .. } => {
                let (done, total) = (group * total + done, groups * total);
                let elapsed = s.started.map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0);
                if let Some(bar) = &s.bar {
                    // The tiles cover the crop box, which the plan (on the whole volume)
                    // overestimates.
                    bar.set_length(total as u64);
                    bar.set_position(done as u64);
                } else if !log.quiet && done as f64 / total as f64 >= s.next_line {
                    eprintln!("{}: {done}/{total} tiles, {elapsed:.1} s", s.label);
                    s.next_line += 0.25;
                }
            }
            Event::Predicted { tiles, seconds, .. } => {
                if let Some(bar) = s.bar.take() {
                    bar.finish_and_clear();
                }
                log.info(format!("{}: {tiles} tile(s) in {seconds:.1} s", s.label));
            }
            Event::Written(r) if !log.quiet => {
                self.print_notes(&s, &r.name);
                if !r.empty_prompts.is_empty() {
                    let names: Vec<String> = r.empty_prompts.iter().map(|p| format!("{p:?}")).collect();
                    let line = format!("{}: empty mask (nothing found) for {}", r.name, names.join(", "));
                    print_above(&s, &line);
                }
                let line =
                    format!("{}: wrote {} file(s) in {:.1} s", r.name, r.outputs.len(), r.write_seconds);
                print_above(&s, &line);
            }
            Event::Failed(r) if r.status == CaseStatus::Failed => {
                self.print_notes(&s, &r.name);
                let line = format!("error: {}: {}", r.source, flags(r.error.as_deref().unwrap_or("failed")));
                // The bar is the case being predicted: closed when that case failed, kept (and
                // drawn again below the line) when the writer reports an earlier one.
                if s.case == Some(r.index)
                    && let Some(bar) = s.bar.take()
                {
                    bar.finish_and_clear();
                }
                print_above(&s, &line);
            }
            Event::Written(r) | Event::Failed(r) => self.print_notes(&s, &r.name),
            Event::Skipped(_) | Event::Read { .. } => {}
        }
    }
}

/// A line on stderr; a progress bar of the case being predicted (the writer reports the case
/// before it) is drawn again below it.
fn print_above(s: &State, line: &str) {
    match &s.bar {
        Some(bar) => bar.suspend(|| eprintln!("{line}")),
        None => eprintln!("{line}"),
    }
}

/// The library names an option by its field (``option `max_memory` ``); the user knows it by its
/// flag.
pub fn flags(text: &str) -> String {
    const FLAGS: [(&str, &str); 13] = [
        ("num_parts", "--num-parts"),
        ("part_id", "--part-id"),
        ("max_memory", "--max-memory"),
        ("accumulate", "--accumulate"),
        ("step_size", "--step-size"),
        ("jobs", "--jobs"),
        ("inputs", "-i/--input"),
        ("prompts", "-p/--prompts"),
        ("model", "-m/--model"),
        ("text_model", "--text-model"),
        ("embeddings", "--embeddings"),
        ("resume", "--resume"),
        ("output_type", "--output-type"),
    ];
    FLAGS.iter().fold(text.to_string(), |t, (option, flag)| t.replace(&format!("option `{option}`"), flag))
}

/// An error with its causes, each cause added only when the message so far does not already
/// say it (the crates' errors often include their source's text), in the command's words.
pub fn message(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.is_empty() {
            out = text;
        } else if !out.contains(&text) {
            out = format!("{out}: {text}");
        }
    }
    flags(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_options_are_named_by_their_flags() {
        let msg = flags("raise the memory budget, option `max_memory`, or use a machine with more memory");
        assert_eq!(msg, "raise the memory budget, --max-memory, or use a machine with more memory");
    }
}
