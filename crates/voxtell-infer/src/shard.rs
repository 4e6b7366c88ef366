//! One part of a cohort: many processes — a Slurm job array, a Kubernetes Indexed Job, one
//! process per GPU — each run every N-th case, with nnU-Net's rule (`-num_parts N -part_id i`:
//! the sorted, de-duplicated case names, taken from position `i` in steps of `N`). Parts are
//! disjoint and together they are the whole run, so they can share one output folder; nothing is
//! communicated between them.
//!
//! [`Part::resolve`] reads the part from the flags, or, only when asked (`auto`), from the
//! scheduler's environment: Slurm's `SLURM_ARRAY_TASK_{ID,MIN,MAX,STEP,COUNT}` (a range array
//! such as `--array=0-31` or `--array=4-40:4`; list arrays such as `--array=1,5,7` have no
//! part number and are refused) or Kubernetes' `JOB_COMPLETION_INDEX` with an explicit count.

use std::collections::BTreeSet;

use crate::error::{InferError, Result};
use crate::job::Job;

/// Which part of the cases this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    /// The part, `0..count`.
    pub id: usize,
    /// How many parts the cases are split into.
    pub count: usize,
}

/// A part id or count as given on the command line: a number, or `auto` (from the scheduler).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartArg {
    /// Read it from the scheduler's environment.
    Auto,
    /// This number.
    Given(usize),
}

impl std::str::FromStr for PartArg {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s.eq_ignore_ascii_case("auto") {
            return Ok(PartArg::Auto);
        }
        s.trim().parse().map(PartArg::Given).map_err(|_| format!("{s:?} is neither a number nor `auto`"))
    }
}

fn option(option: &'static str, reason: String) -> InferError {
    InferError::Option { option, reason }
}

impl Part {
    /// Part `id` of `count`; an id out of range or a zero count is an error.
    pub fn new(id: usize, count: usize) -> Result<Part> {
        if count == 0 {
            return Err(option("num_parts", "must be at least 1".into()));
        }
        if id >= count {
            return Err(option(
                "part_id",
                format!("part {id} does not exist: parts are numbered 0 to {}", count - 1),
            ));
        }
        Ok(Part { id, count })
    }

    /// The part from the flags: `None` when neither is given (the whole run). `auto` reads the
    /// environment through `env` (so tests can give their own); without `auto` the environment is
    /// never read, so array scripts that give each task its own inputs keep working.
    pub fn resolve(
        part_id: Option<PartArg>,
        num_parts: Option<PartArg>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<Part>> {
        use PartArg::{Auto, Given};
        let k8s = || env("JOB_COMPLETION_INDEX").filter(|v| !v.is_empty());
        match (part_id, num_parts) {
            (None, None) => Ok(None),
            (Some(Given(id)), Some(Given(count))) => Part::new(id, count).map(Some),
            (Some(Given(_)), None) => {
                Err(option("num_parts", "is needed with --part-id (a number, or auto)".into()))
            }
            (None, Some(_)) => {
                Err(option("part_id", "is needed with --num-parts (a number, or auto)".into()))
            }
            // The part from the scheduler: Kubernetes gives the index only, Slurm both.
            (Some(Auto), count) => {
                if let (Some(index), Some(Given(count))) = (k8s(), count) {
                    let id = index.trim().parse::<usize>().map_err(|_| {
                        option("part_id", format!("JOB_COMPLETION_INDEX={index:?} is not a number"))
                    })?;
                    return Part::new(id, count).map(Some);
                }
                let part = slurm_part(env)?;
                if let Some(Given(count)) = count
                    && count != part.count
                {
                    return Err(option(
                        "num_parts",
                        format!(
                            "is {count} but the Slurm array has {} tasks (SLURM_ARRAY_TASK_COUNT)",
                            part.count
                        ),
                    ));
                }
                Ok(Some(part))
            }
            (Some(Given(id)), Some(Auto)) => {
                if k8s().is_some() {
                    return Err(option(
                        "num_parts",
                        "`auto` needs a Slurm array; a Kubernetes Indexed Job gives no count: pass --num-parts N".into(),
                    ));
                }
                Part::new(id, slurm_part(env)?.count).map(Some)
            }
        }
    }

    /// This part's jobs: the distinct case names sorted, every `count`-th from position `id`,
    /// with all the jobs of each chosen name, in name order.
    pub fn select(&self, jobs: Vec<Job>) -> Vec<Job> {
        let names: BTreeSet<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
        let chosen: BTreeSet<String> =
            names.into_iter().skip(self.id).step_by(self.count).map(str::to_string).collect();
        let mut mine: Vec<Job> = jobs.into_iter().filter(|j| chosen.contains(&j.name)).collect();
        mine.sort_by(|a, b| a.name.cmp(&b.name));
        mine
    }

    /// The tag this part puts in its temporary file names (`p{id}of{count}`), so that a
    /// restarted part can remove its own leftovers and never another part's.
    pub fn tag(&self) -> String {
        format!("p{}of{}", self.id, self.count)
    }
}

/// The part of this Slurm array task.
fn slurm_part(env: &dyn Fn(&str) -> Option<String>) -> Result<Part> {
    let var = |name: &'static str| -> Result<Option<usize>> {
        match env(name).filter(|v| !v.is_empty()) {
            None => Ok(None),
            Some(v) => v
                .trim()
                .parse::<usize>()
                .map(Some)
                .map_err(|_| option("part_id", format!("{name}={v:?} is not a number"))),
        }
    };
    let need = |name: &'static str, v: Option<usize>| {
        v.ok_or_else(|| {
            option(
                "part_id",
                format!(
                    "`auto` needs a Slurm array task (SLURM_ARRAY_TASK_ID, _MIN, _MAX, _COUNT) or a Kubernetes Indexed Job (JOB_COMPLETION_INDEX with --num-parts); {name} is not set"
                ),
            )
        })
    };
    let id = need("SLURM_ARRAY_TASK_ID", var("SLURM_ARRAY_TASK_ID")?)?;
    let min = need("SLURM_ARRAY_TASK_MIN", var("SLURM_ARRAY_TASK_MIN")?)?;
    let max = need("SLURM_ARRAY_TASK_MAX", var("SLURM_ARRAY_TASK_MAX")?)?;
    let count = need("SLURM_ARRAY_TASK_COUNT", var("SLURM_ARRAY_TASK_COUNT")?)?;
    let step = var("SLURM_ARRAY_TASK_STEP")?.unwrap_or(1).max(1);
    let range = format!("SLURM_ARRAY_TASK_MIN={min}, _MAX={max}, _STEP={step}, _COUNT={count}, _ID={id}");
    if max < min || (max - min) % step != 0 || (max - min) / step + 1 != count {
        return Err(option(
            "part_id",
            format!(
                "the Slurm array is not a range ({range}); list arrays such as --array=1,5,7 have no part number: use --array=0-{} or give --part-id and --num-parts",
                count.saturating_sub(1)
            ),
        ));
    }
    if id < min || id > max || (id - min) % step != 0 {
        return Err(option("part_id", format!("the task id is not in the array ({range})")));
    }
    Part::new((id - min) / step, count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    fn slurm(
        id: usize,
        min: usize,
        max: usize,
        step: usize,
        count: usize,
    ) -> impl Fn(&str) -> Option<String> {
        let vars = [
            ("SLURM_ARRAY_TASK_ID", id.to_string()),
            ("SLURM_ARRAY_TASK_MIN", min.to_string()),
            ("SLURM_ARRAY_TASK_MAX", max.to_string()),
            ("SLURM_ARRAY_TASK_STEP", step.to_string()),
            ("SLURM_ARRAY_TASK_COUNT", count.to_string()),
        ];
        let map: HashMap<String, String> = vars.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        move |k: &str| map.get(k).cloned()
    }

    #[test]
    fn parts_are_disjoint_and_complete_for_every_count() {
        let names = ["b", "a", "c", "e", "d", "a", "f", "g"];
        let jobs: Vec<Job> = names
            .iter()
            .enumerate()
            .map(|(i, n)| Job { name: n.to_string(), ..Job::from_path(format!("{i}.nii"), vec!["x".into()]) })
            .collect();
        for count in 1..=5 {
            let mut seen = Vec::new();
            for id in 0..count {
                let mine = Part::new(id, count).unwrap().select(jobs.clone());
                // nnU-Net's rule: sorted unique names[id::count].
                let expected: Vec<&str> =
                    ["a", "b", "c", "d", "e", "f", "g"].iter().copied().skip(id).step_by(count).collect();
                let mut got: Vec<&str> = mine.iter().map(|j| j.name.as_str()).collect();
                got.dedup();
                assert_eq!(got, expected, "part {id} of {count}");
                seen.extend(mine.iter().map(|j| j.input.describe()));
            }
            seen.sort();
            let mut all: Vec<String> = jobs.iter().map(|j| j.input.describe()).collect();
            all.sort();
            assert_eq!(seen, all, "{count} parts");
        }
    }

    #[test]
    fn flags_alone_never_read_the_environment() {
        let panicking = |_: &str| -> Option<String> { panic!("the environment was read") };
        assert_eq!(Part::resolve(None, None, &panicking).unwrap(), None);
        assert_eq!(
            Part::resolve(Some(PartArg::Given(2)), Some(PartArg::Given(3)), &panicking).unwrap(),
            Some(Part { id: 2, count: 3 })
        );
        let e = Part::resolve(Some(PartArg::Given(3)), Some(PartArg::Given(3)), &panicking).unwrap_err();
        assert_eq!(e.option(), Some("part_id"));
        let e = Part::resolve(Some(PartArg::Given(0)), None, &panicking).unwrap_err();
        assert_eq!(e.option(), Some("num_parts"));
        let e = Part::resolve(None, Some(PartArg::Given(2)), &panicking).unwrap_err();
        assert_eq!(e.option(), Some("part_id"));
        assert!(Part::resolve(Some(PartArg::Given(0)), Some(PartArg::Given(0)), &panicking).is_err());
    }

    #[test]
    fn slurm_range_arrays_give_the_part_and_list_arrays_are_refused() {
        let auto = (Some(PartArg::Auto), Some(PartArg::Auto));
        // --array=0-2
        for id in 0..3 {
            let p = Part::resolve(auto.0, auto.1, &slurm(id, 0, 2, 1, 3)).unwrap();
            assert_eq!(p, Some(Part { id, count: 3 }));
        }
        // --array=4-40:4 → 10 tasks, task 12 is part 2.
        assert_eq!(
            Part::resolve(auto.0, auto.1, &slurm(12, 4, 40, 4, 10)).unwrap(),
            Some(Part { id: 2, count: 10 })
        );
        // --array=1,5,7: MIN 1, MAX 7, COUNT 3 is no range.
        let e = Part::resolve(auto.0, auto.1, &slurm(5, 1, 7, 1, 3)).unwrap_err().to_string();
        assert!(e.contains("SLURM_ARRAY_TASK_COUNT") || e.contains("_COUNT=3"), "{e}");
        assert!(e.contains("list arrays"), "{e}");
        // An explicit count that disagrees with the array.
        let e =
            Part::resolve(Some(PartArg::Auto), Some(PartArg::Given(4)), &slurm(1, 0, 2, 1, 3)).unwrap_err();
        assert_eq!(e.option(), Some("num_parts"));
        // No scheduler at all.
        let e = Part::resolve(auto.0, auto.1, &env(&[])).unwrap_err().to_string();
        assert!(e.contains("SLURM_ARRAY_TASK_ID") && e.contains("JOB_COMPLETION_INDEX"), "{e}");
        // A part id from the flags and the count from the array.
        assert_eq!(
            Part::resolve(Some(PartArg::Given(1)), Some(PartArg::Auto), &slurm(0, 0, 2, 1, 3)).unwrap(),
            Some(Part { id: 1, count: 3 })
        );
    }

    #[test]
    fn kubernetes_indexed_jobs_need_the_count() {
        let k = env(&[("JOB_COMPLETION_INDEX", "3")]);
        assert_eq!(
            Part::resolve(Some(PartArg::Auto), Some(PartArg::Given(5)), &k).unwrap(),
            Some(Part { id: 3, count: 5 })
        );
        assert!(Part::resolve(Some(PartArg::Auto), Some(PartArg::Given(3)), &k).is_err());
        assert!(Part::resolve(Some(PartArg::Auto), Some(PartArg::Auto), &k).is_err());
        assert!(
            Part::resolve(
                Some(PartArg::Auto),
                Some(PartArg::Given(5)),
                &env(&[("JOB_COMPLETION_INDEX", "x")])
            )
            .is_err()
        );
    }
}
