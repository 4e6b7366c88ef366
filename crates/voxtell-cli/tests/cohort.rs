//! `voxtell predict` over a cohort: parts (flags, Slurm and Kubernetes variables), reports,
//! retrying failed cases, and resuming after kills at any moment — the folder always holds only
//! complete outputs, and ends equal to a clean run.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// A folder of `n` small cases (copies of the two fixture images under new names).
fn cohort(dir: &Path, n: usize) -> PathBuf {
    let input = dir.join("in");
    std::fs::create_dir_all(&input).unwrap();
    let images = ["ct_oblique", "mr_small"];
    for i in 0..n {
        let src = fixtures().join(format!("infer/predict/images/{}.nii.gz", images[i % 2]));
        std::fs::copy(src, input.join(format!("case{i:02}.nii.gz"))).unwrap();
    }
    input
}

fn predict(input: &Path, out: &Path, extra: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_voxtell"));
    cmd.arg("predict")
        .arg("-i")
        .arg(input)
        .arg("-o")
        .arg(out)
        .arg("-m")
        .arg(fixtures().join("fusion/cfg_a"))
        .arg("--embeddings")
        .arg(fixtures().join("infer/predict/bank.npz"))
        .args(["-p", "liver", "left kidney", "--threads", "1", "-q"])
        .args(extra)
        .env("HF_HOME", "/nonexistent-voxtell-test");
    for var in [
        "SLURM_ARRAY_TASK_ID",
        "SLURM_ARRAY_TASK_MIN",
        "SLURM_ARRAY_TASK_MAX",
        "SLURM_ARRAY_TASK_STEP",
        "SLURM_ARRAY_TASK_COUNT",
        "SLURM_CPUS_PER_TASK",
        "JOB_COMPLETION_INDEX",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

fn run(input: &Path, out: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    predict(input, out, extra, env).output().unwrap()
}

/// Every file of a folder with its bytes.
fn contents(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| {
                let e = e.unwrap();
                (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap())
            })
            .collect()
        })
        .unwrap_or_default()
}

fn report_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn parts_are_disjoint_and_together_the_whole_run() {
    let tmp = tempfile::tempdir().unwrap();
    let input = cohort(tmp.path(), 7);
    let whole = tmp.path().join("whole");
    assert!(run(&input, &whole, &[], &[]).status.success());
    let expected = contents(&whole);
    assert_eq!(expected.len(), 14);
    for n in 1..=5 {
        let out = tmp.path().join(format!("parts{n}"));
        let mut written: BTreeMap<String, usize> = BTreeMap::new();
        for i in 0..n {
            let report = tmp.path().join(format!("r{n}-{{part}}.jsonl"));
            let o = run(
                &input,
                &out,
                &[
                    "--num-parts",
                    &n.to_string(),
                    "--part-id",
                    &i.to_string(),
                    "--report",
                    report.to_str().unwrap(),
                ],
                &[],
            );
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            let lines = report_lines(&tmp.path().join(format!("r{n}-{i}.jsonl")));
            // nnU-Net's rule: sorted cases, every n-th from i.
            let cases: Vec<String> = lines.iter().map(|l| l["case"].as_str().unwrap().to_string()).collect();
            let expected_cases: Vec<String> =
                (0..7).skip(i).step_by(n).map(|c| format!("case{c:02}")).collect();
            assert_eq!(cases, expected_cases, "part {i} of {n}");
            for l in &lines {
                assert_eq!(l["status"], "ok");
                assert_eq!(l["part"], format!("{i}/{n}"));
                assert!(l["peak_rss"].as_u64().unwrap() > 0);
                for f in l["outputs"].as_array().unwrap() {
                    let name =
                        Path::new(f.as_str().unwrap()).file_name().unwrap().to_string_lossy().into_owned();
                    *written.entry(name).or_default() += 1;
                }
            }
        }
        assert_eq!(contents(&out), expected, "{n} parts");
        assert!(written.values().all(|&c| c == 1), "a file written by two parts: {written:?}");
    }
}

#[test]
fn auto_parts_come_from_slurm_range_arrays_and_kubernetes() {
    let tmp = tempfile::tempdir().unwrap();
    let input = cohort(tmp.path(), 5);
    let out = tmp.path().join("out");
    // --array=10-14:2 → tasks 10, 12, 14 are parts 0, 1, 2 of 3.
    for (task, part) in [(10, 0), (12, 1), (14, 2)] {
        let env = [
            ("SLURM_ARRAY_TASK_ID", task.to_string()),
            ("SLURM_ARRAY_TASK_MIN", "10".to_string()),
            ("SLURM_ARRAY_TASK_MAX", "14".to_string()),
            ("SLURM_ARRAY_TASK_STEP", "2".to_string()),
            ("SLURM_ARRAY_TASK_COUNT", "3".to_string()),
            ("SLURM_CPUS_PER_TASK", "1".to_string()),
        ];
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let report = tmp.path().join("slurm-{part}.jsonl");
        let o = run(
            &input,
            &out,
            &["--part-id", "auto", "--num-parts", "auto", "--report", report.to_str().unwrap()],
            &env,
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{err}");
        assert!(err.is_empty() || !err.contains("error"), "{err}");
        let cases: Vec<String> = report_lines(&tmp.path().join(format!("slurm-{part}.jsonl")))
            .iter()
            .map(|l| l["case"].as_str().unwrap().to_string())
            .collect();
        let expected: Vec<String> = (0..5).skip(part).step_by(3).map(|c| format!("case{c:02}")).collect();
        assert_eq!(cases, expected, "task {task}");
    }
    assert_eq!(contents(&out).len(), 10);
    // A list array (--array=1,5,7) has no part number.
    let env = [
        ("SLURM_ARRAY_TASK_ID", "5"),
        ("SLURM_ARRAY_TASK_MIN", "1"),
        ("SLURM_ARRAY_TASK_MAX", "7"),
        ("SLURM_ARRAY_TASK_COUNT", "3"),
    ];
    let o = run(&input, &tmp.path().join("list"), &["--part-id", "auto", "--num-parts", "auto"], &env);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("SLURM_ARRAY_TASK") && err.contains("--part-id"), "{err}");
    assert!(!tmp.path().join("list").exists(), "refused before any work");
    // Kubernetes: JOB_COMPLETION_INDEX with an explicit count.
    let k8s = tmp.path().join("k8s");
    for index in 0..2 {
        let o = run(
            &input,
            &k8s,
            &["--part-id", "auto", "--num-parts", "2"],
            &[("JOB_COMPLETION_INDEX", &index.to_string())],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert_eq!(contents(&k8s), contents(&out));
    // Without `auto`, the environment is never read.
    let o = run(
        &input,
        &tmp.path().join("plain"),
        &[],
        &[("SLURM_ARRAY_TASK_ID", "x"), ("JOB_COMPLETION_INDEX", "y")],
    );
    assert!(o.status.success());
    assert_eq!(contents(&tmp.path().join("plain")), contents(&out));
}

#[test]
fn bad_parts_are_refused_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let input = cohort(tmp.path(), 2);
    let out = tmp.path().join("out");
    for (args, needle) in [
        (vec!["--num-parts", "3", "--part-id", "3"], "--part-id"),
        (vec!["--num-parts", "0", "--part-id", "0"], "--num-parts"),
        (vec!["--part-id", "1"], "--num-parts"),
        (vec!["--num-parts", "2"], "--part-id"),
        (vec!["--num-parts", "two", "--part-id", "0"], "auto"),
        (vec!["--part-id", "auto", "--num-parts", "auto"], "SLURM_ARRAY_TASK_ID"),
    ] {
        let o = run(&input, &out, &args, &[]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!out.exists(), "{args:?}: output folder made");
    }
}

#[test]
fn a_failing_case_is_reported_and_can_be_retried() {
    let tmp = tempfile::tempdir().unwrap();
    let input = cohort(tmp.path(), 4);
    std::fs::write(input.join("case01.nii.gz"), b"not a nifti").unwrap();
    let out = tmp.path().join("out");
    let report = tmp.path().join("report-{part}.jsonl");
    let o =
        run(&input, &out, &["--num-parts", "1", "--part-id", "0", "--report", report.to_str().unwrap()], &[]);
    assert!(!o.status.success(), "a failed case makes the exit code non-zero");
    let path = tmp.path().join("report-0.jsonl");
    let lines = report_lines(&path);
    let status: BTreeMap<&str, &str> =
        lines.iter().map(|l| (l["case"].as_str().unwrap(), l["status"].as_str().unwrap())).collect();
    assert_eq!(
        status,
        BTreeMap::from([("case00", "ok"), ("case01", "failed"), ("case02", "ok"), ("case03", "ok")])
    );
    let failed = lines.iter().find(|l| l["status"] == "failed").unwrap();
    assert!(failed["error"].as_str().unwrap().contains("case01.nii.gz"), "{failed}");
    assert_eq!(failed["prompts"], serde_json::json!(["liver", "left kidney"]));
    // Fix the input and retry only the failed case from the report.
    std::fs::copy(fixtures().join("infer/predict/images/mr_small.nii.gz"), input.join("case01.nii.gz"))
        .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_voxtell"));
    let o = cmd
        .args(["predict", "--retry-failed"])
        .arg(&path)
        .arg("-o")
        .arg(&out)
        .arg("-m")
        .arg(fixtures().join("fusion/cfg_a"))
        .arg("--embeddings")
        .arg(fixtures().join("infer/predict/bank.npz"))
        .args(["--report", path.to_str().unwrap(), "-q"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines = report_lines(&path);
    assert_eq!(lines.len(), 5);
    assert_eq!(lines[4]["case"], "case01");
    assert_eq!(lines[4]["status"], "ok");
    assert_eq!(contents(&out).len(), 8);
    // Nothing failed any more: a second retry has nothing to do.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_voxtell"));
    let o = cmd.args(["predict", "--retry-failed"]).arg(&path).arg("-o").arg(&out).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Temporary names in a folder.
fn temporaries(dir: &Path) -> BTreeSet<String> {
    contents(dir).into_keys().filter(|n| n.starts_with(".voxtell-tmp-")).collect()
}

#[test]
fn a_process_aborted_before_a_rename_leaves_only_a_temporary_file_that_its_restart_removes() {
    let tmp = tempfile::tempdir().unwrap();
    let input = cohort(tmp.path(), 4);
    let whole = tmp.path().join("whole");
    assert!(run(&input, &whole, &[], &[]).status.success());
    let out = tmp.path().join("out");
    let part = ["--num-parts", "2", "--part-id", "0", "--no-overwrite"];
    let other = ["--num-parts", "2", "--part-id", "1", "--no-overwrite"];
    // Part 1 dies before its second rename, part 0 before its third.
    let o = run(&input, &out, &other, &[("VOXTELL_TEST_ABORT_BEFORE_RENAME", "2")]);
    assert!(!o.status.success());
    let o = run(&input, &out, &part, &[("VOXTELL_TEST_ABORT_BEFORE_RENAME", "3")]);
    assert!(!o.status.success());
    let left = temporaries(&out);
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(
        left.iter().any(|n| n.starts_with(".voxtell-tmp-p0of2-"))
            && left.iter().any(|n| n.starts_with(".voxtell-tmp-p1of2-"))
    );
    // Every output present is complete.
    for (name, bytes) in contents(&out).into_iter().filter(|(n, _)| !n.starts_with('.')) {
        assert_eq!(Some(&bytes), contents(&whole).get(&name), "{name}");
    }
    // Part 0 restarts: it removes its own leftover, never part 1's, and finishes its cases.
    assert!(run(&input, &out, &part, &[]).status.success());
    let left = temporaries(&out);
    assert_eq!(left.len(), 1);
    assert!(left.iter().all(|n| n.starts_with(".voxtell-tmp-p1of2-")), "{left:?}");
    assert!(run(&input, &out, &other, &[]).status.success());
    assert_eq!(contents(&out), contents(&whole));
}

#[test]
fn twenty_kills_at_random_moments_then_a_restart_give_the_clean_run() {
    let tmp = tempfile::tempdir().unwrap();
    let input = cohort(tmp.path(), 6);
    let whole = tmp.path().join("whole");
    let t = std::time::Instant::now();
    assert!(run(&input, &whole, &[], &[]).status.success());
    let full = t.elapsed();
    let expected = contents(&whole);
    let out = tmp.path().join("out");
    let args = ["--num-parts", "1", "--part-id", "0", "--no-overwrite"];
    // A fixed-seed generator: the kill times are spread over a whole run's length.
    let mut state: u64 = 0x5eed_1234_abcd_0001;
    let mut next = || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) as f64 / (1u64 << 31) as f64
    };
    for kill in 0..20 {
        let mut child = predict(&input, &out, &args, &[]).spawn().unwrap();
        std::thread::sleep(full.mul_f64(next()));
        let _ = child.kill();
        let _ = child.wait();
        // At every moment: no partial file under an output's name, and only this part's
        // temporaries besides.
        for (name, bytes) in contents(&out) {
            if name.starts_with(".voxtell-tmp-") {
                assert!(name.starts_with(".voxtell-tmp-p0of1-"), "kill {kill}: {name}");
            } else {
                assert_eq!(
                    Some(&bytes),
                    expected.get(&name),
                    "kill {kill}: {name} differs from the clean run"
                );
            }
        }
    }
    let o = run(&input, &out, &args, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(contents(&out), expected);
}
