//! The batch API on the tiny fixture model (`fixtures/fusion/cfg_a`, random weights) and the
//! fixture scans: the same masks as a single prediction, for a path and for a volume in memory;
//! events in order; per-job and batch-wide cancel; a failing case or writer recorded while the
//! batch goes on; skipping finished cases; bad jobs refused before any work.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device};
use voxtell_infer::{
    Batch, BatchOptions, CaseStatus, CombinedMap, Event, InferError, Job, MaskFiles, OutputWriter,
    PredictOptions, PredictedCase, Predictor, PreviewImage, ProbabilityMaps, StatisticsFile,
    jobs_from_inputs, jobs_from_json,
};
use voxtell_text::{EmbeddingBank, PromptVectors};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn image(name: &str) -> PathBuf {
    root().join(format!("infer/predict/images/{name}.nii.gz"))
}

fn predictor() -> Predictor {
    let bank = EmbeddingBank::read(root().join("infer/predict/bank.npz")).unwrap();
    let vectors = PromptVectors::new(bank, None, DType::F32, &Device::Cpu);
    Predictor::from_dir(root().join("fusion/cfg_a"), vectors, PredictOptions::default(), &Device::Cpu)
        .unwrap()
}

fn strings(s: &[&str]) -> Vec<String> {
    s.iter().map(|p| p.to_string()).collect()
}

fn masks_only(out: &Path) -> BatchOptions {
    BatchOptions::new(out, vec![Arc::new(MaskFiles) as Arc<dyn OutputWriter>])
}

/// Events as lines, for order checks.
#[derive(Default)]
struct Seen(Mutex<Vec<String>>);

impl Seen {
    fn push(&self, e: &Event<'_>) {
        let line = match e {
            Event::Skipped(r) => format!("skipped {}", r.name),
            Event::Read { case, name, image } => format!("read {case} {name} {:?}", image.data.shape()),
            Event::Started { case, cases, name } => format!("started {case}/{cases} {name}"),
            Event::Planned { name, groups, .. } => format!("planned {name} {}", groups.len()),
            Event::Tile { case, group, done, total, .. } => format!("tile {case} {group} {done}/{total}"),
            Event::Predicted { name, .. } => format!("predicted {name}"),
            Event::Written(r) => format!("written {}", r.name),
            Event::Failed(r) => format!("failed {} {:?}", r.name, r.status),
        };
        self.0.lock().unwrap().push(line);
    }

    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

fn read_u8(path: &Path) -> Vec<f32> {
    voxtell_io::read_nifti(path).unwrap().data.iter().copied().collect()
}

#[test]
fn a_batch_writes_the_masks_of_a_single_prediction_for_paths_and_volumes_in_memory() {
    let out = tempfile::tempdir().unwrap();
    let prompts = strings(&["Liver", "left kidney"]);
    let volume = Arc::new(voxtell_io::read(image("mr_small")).unwrap());
    let jobs = vec![
        Job::from_path(image("mr_small"), prompts.clone()),
        Job::from_volume("in_memory", volume.clone(), prompts.clone()),
    ];
    let batch = Batch::new(jobs, masks_only(out.path())).unwrap();
    assert_eq!(batch.prompts(), vec!["Liver", "left kidney"]);
    let mut p = predictor();
    let seen = Seen::default();
    let records = p.run_batch(&batch, &|e| seen.push(e)).unwrap();
    assert_eq!(records.len(), 2);
    for (r, case) in records.iter().zip(batch.cases()) {
        assert_eq!(r.status, CaseStatus::Written, "{r:?}");
        let want: Vec<PathBuf> = case.outputs.iter().map(|f| out.path().join(f)).collect();
        assert_eq!(r.outputs, want);
        assert!(r.tiles > 0 && r.error.is_none());
    }
    assert_eq!(records[1].source, "(in memory)");
    // The single-prediction API gives the same masks, bit for bit.
    let masks = p.predict(&volume, &["Liver", "left kidney"]).unwrap();
    for (i, safe) in ["Liver", "left_kidney"].iter().enumerate() {
        let single = out.path().join(format!("single_{safe}.nii.gz"));
        masks.write_mask(i, &single, voxtell_io::WriteOptions::default()).unwrap();
        let want = read_u8(&single);
        assert_eq!(read_u8(&out.path().join(format!("mr_small_{safe}.nii.gz"))), want, "{safe}");
        assert_eq!(read_u8(&out.path().join(format!("in_memory_{safe}.nii.gz"))), want, "{safe}");
    }
    // Events: each case is read, starts, is planned, runs its tiles up to the group's total, is
    // predicted, then written.
    let lines = seen.lines();
    for (case, name) in [(0, "mr_small"), (1, "in_memory")] {
        let at = |prefix: &str| lines.iter().position(|l| l.starts_with(prefix)).unwrap();
        let read = at(&format!("read {case} {name} {:?}", volume.to_ras().unwrap().data.shape()));
        let started = at(&format!("started {case}/2 {name}"));
        let planned = at(&format!("planned {name} 1"));
        let predicted = at(&format!("predicted {name}"));
        let written = at(&format!("written {name}"));
        assert!(
            read < started && started < planned && planned < predicted && predicted < written,
            "{lines:?}"
        );
        let tiles: Vec<&String> =
            lines.iter().filter(|l| l.starts_with(&format!("tile {case} 0 "))).collect();
        assert_eq!(tiles.len(), records[case].tiles, "{lines:?}");
        let last = tiles.last().unwrap();
        let (done, total) = last.rsplit_once(' ').unwrap().1.split_once('/').unwrap();
        assert_eq!(done, total, "the last tile event closes the group: {last}");
    }
}

#[test]
fn a_batch_under_a_tight_budget_reads_no_case_ahead_that_does_not_fit_and_still_finishes() {
    let prompts = strings(&["Liver", "left kidney"]);
    let volume = Arc::new(voxtell_io::read(image("mr_small")).unwrap());
    let jobs = |n: usize| -> Vec<Job> {
        (0..n).map(|i| Job::from_volume(format!("case{i}"), volume.clone(), prompts.clone())).collect()
    };
    // Unconstrained, for the masks.
    let roomy = tempfile::tempdir().unwrap();
    let mut p = predictor();
    let records = p.run_batch(&Batch::new(jobs(3), masks_only(roomy.path())).unwrap(), &|_| {}).unwrap();
    assert!(records.iter().all(|r| r.status == CaseStatus::Written && r.network_seconds > 0.0));
    assert!(records.iter().all(|r| r.network_seconds <= r.predict_seconds), "{records:?}");
    // A budget that holds one case's working set but not a second image beside it: every plan
    // fits what the other stages left, and the batch does not wait for room that never comes.
    let ras = volume.to_ras().unwrap();
    let shape = ras.data.shape();
    let one = p.plan([shape[0], shape[1], shape[2]], prompts.len()).unwrap().estimated_bytes;
    let budget = one + 1024;
    p.set_options(PredictOptions { max_memory: Some(budget), ..PredictOptions::default() });
    let tight = tempfile::tempdir().unwrap();
    let plans = Mutex::new(Vec::new());
    let batch = Batch::new(jobs(3), masks_only(tight.path())).unwrap();
    let records = p
        .run_batch(&batch, &|e| {
            if let Event::Planned { plan, .. } = e {
                plans.lock().unwrap().push(**plan);
            }
        })
        .unwrap();
    assert!(records.iter().all(|r| r.status == CaseStatus::Written), "{records:?}");
    let plans = plans.into_inner().unwrap();
    assert_eq!(plans.len(), 3);
    for plan in &plans {
        assert_eq!(plan.budget_bytes + plan.held_bytes, budget, "{plan:?}");
        assert!(plan.estimated_bytes <= plan.budget_bytes, "{plan:?}");
    }
    for case in batch.cases() {
        for f in &case.outputs {
            assert_eq!(read_u8(&tight.path().join(f)), read_u8(&roomy.path().join(f)), "{f}");
        }
    }
}

#[test]
fn every_writer_of_the_command_writes_the_files_it_lists() {
    let out = tempfile::tempdir().unwrap();
    let writers: Vec<Arc<dyn OutputWriter>> = vec![
        Arc::new(CombinedMap),
        Arc::new(ProbabilityMaps),
        Arc::new(StatisticsFile),
        Arc::new(PreviewImage),
    ];
    let options = BatchOptions { keep_largest: true, ..BatchOptions::new(out.path(), writers) };
    let jobs = vec![Job::from_path(image("ct_oblique"), strings(&["Liver", "lesion (liver)/segment 4"]))];
    let batch = Batch::new(jobs, options).unwrap();
    assert_eq!(
        batch.cases()[0].outputs,
        strings(&[
            "ct_oblique.nii.gz",
            "ct_oblique_Liver_prob.nii.gz",
            "ct_oblique_lesion__liver__segment_4_prob.nii.gz",
            "ct_oblique_statistics.json",
            "ct_oblique_preview.png",
        ])
    );
    let records = predictor().run_batch(&batch, &|_| {}).unwrap();
    assert_eq!(records[0].status, CaseStatus::Written, "{:?}", records[0]);
    let mut listed: Vec<String> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    listed.sort();
    let mut want = batch.cases()[0].outputs.clone();
    want.sort();
    assert_eq!(listed, want, "exactly the listed files, no temporary files left");
}

#[test]
fn a_cancelled_job_writes_nothing_and_the_batch_goes_on() {
    let out = tempfile::tempdir().unwrap();
    let jobs = vec![
        Job::from_path(image("mr_small"), strings(&["Liver"])),
        Job::from_path(image("ct_oblique"), strings(&["Liver"])),
    ];
    let first = jobs[0].cancel.clone();
    let batch = Batch::new(jobs, masks_only(out.path())).unwrap();
    let records = predictor()
        .run_batch(&batch, &|e| {
            if let Event::Tile { case: 0, .. } = e {
                first.cancel();
            }
        })
        .unwrap();
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].status, CaseStatus::Cancelled);
    assert!(records[0].outputs.is_empty() && records[0].error.is_none());
    assert_eq!(records[1].status, CaseStatus::Written);
    assert!(!out.path().join("mr_small_Liver.nii.gz").exists());
    assert!(out.path().join("ct_oblique_Liver.nii.gz").exists());
}

#[test]
fn a_cancelled_batch_starts_nothing_more() {
    let out = tempfile::tempdir().unwrap();
    let jobs = vec![
        Job::from_path(image("mr_small"), strings(&["Liver"])),
        Job::from_path(image("ct_oblique"), strings(&["Liver"])),
    ];
    let options = masks_only(out.path());
    let stop = options.cancel.clone();
    let batch = Batch::new(jobs, options).unwrap();
    let seen = Seen::default();
    let records = predictor()
        .run_batch(&batch, &|e| {
            seen.push(e);
            if let Event::Tile { case: 0, .. } = e {
                stop.cancel();
            }
        })
        .unwrap();
    assert!(records.is_empty(), "{records:?}");
    assert!(!seen.lines().iter().any(|l| l.starts_with("started 1")), "{:?}", seen.lines());
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
}

#[test]
fn a_case_that_fails_is_recorded_with_its_path_and_the_others_are_written() {
    let tmp = tempfile::tempdir().unwrap();
    let broken = tmp.path().join("broken.nii.gz");
    std::fs::write(&broken, b"not a nifti file").unwrap();
    let out = tmp.path().join("out");
    let jobs = vec![
        Job::from_path(image("mr_small"), strings(&["Liver"])),
        Job::from_path(&broken, strings(&["Liver"])),
        Job::from_path(image("ct_oblique"), strings(&["Liver"])),
    ];
    let batch = Batch::new(jobs, masks_only(&out)).unwrap();
    let records = predictor().run_batch(&batch, &|_| {}).unwrap();
    let status: Vec<CaseStatus> = records.iter().map(|r| r.status).collect();
    assert_eq!(status, [CaseStatus::Written, CaseStatus::Failed, CaseStatus::Written]);
    let error = records[1].error.as_deref().unwrap();
    assert!(error.contains("broken.nii.gz"), "{error}");
    assert!(records[1].outputs.is_empty());
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 2);
}

/// A writer of the caller's own: sees the case, or fails.
#[derive(Debug)]
struct Custom {
    fail: bool,
}

impl OutputWriter for Custom {
    fn files(&self, case: &str, _prompts: &[String]) -> voxtell_infer::Result<Vec<String>> {
        Ok(vec![format!("{case}.txt")])
    }

    fn write(&self, case: &PredictedCase<'_>, dir: &Path) -> voxtell_infer::Result<Vec<PathBuf>> {
        let path = dir.join(format!("{}.txt", case.name));
        if self.fail {
            return Err(InferError::Output { path, reason: "refused by the test writer".into() });
        }
        let voxels: usize = (0..case.masks.len())
            .map(|i| case.masks.mask(i).unwrap().iter().filter(|&&v| v != 0).count())
            .sum();
        std::fs::write(&path, format!("{} {:?} {voxels}", case.input.describe(), case.prompts)).unwrap();
        Ok(vec![path])
    }
}

#[test]
fn a_callers_writer_sees_the_case_and_a_failing_writer_fails_only_its_case() {
    let out = tempfile::tempdir().unwrap();
    let jobs = vec![Job::from_path(image("mr_small"), strings(&["Liver"]))];
    let options = BatchOptions::new(out.path(), vec![Arc::new(Custom { fail: false })]);
    let records = predictor().run_batch(&Batch::new(jobs.clone(), options).unwrap(), &|_| {}).unwrap();
    assert_eq!(records[0].status, CaseStatus::Written);
    let text = std::fs::read_to_string(out.path().join("mr_small.txt")).unwrap();
    assert!(
        text.starts_with(&image("mr_small").display().to_string()) && text.contains("[\"Liver\"]"),
        "{text}"
    );

    let failing = tempfile::tempdir().unwrap();
    let options = BatchOptions::new(failing.path(), vec![Arc::new(Custom { fail: true })]);
    let records = predictor().run_batch(&Batch::new(jobs, options).unwrap(), &|_| {}).unwrap();
    assert_eq!(records[0].status, CaseStatus::Failed);
    let error = records[0].error.as_deref().unwrap();
    assert!(error.contains("mr_small.txt") && error.contains("refused"), "{error}");
}

#[test]
fn finished_cases_are_skipped_and_their_files_left_alone() {
    let out = tempfile::tempdir().unwrap();
    std::fs::write(out.path().join("mr_small_Liver.nii.gz"), b"marker").unwrap();
    let jobs = vec![
        Job::from_path(image("mr_small"), strings(&["Liver"])),
        Job::from_path(image("ct_oblique"), strings(&["Liver"])),
    ];
    let options = BatchOptions { skip_existing: true, ..masks_only(out.path()) };
    let batch = Batch::new(jobs, options).unwrap();
    assert_eq!(batch.pending(), 1);
    let seen = Seen::default();
    let records = predictor().run_batch(&batch, &|e| seen.push(e)).unwrap();
    assert_eq!(records[0].status, CaseStatus::Skipped);
    assert_eq!(records[1].status, CaseStatus::Written);
    assert_eq!(seen.lines()[0], "skipped mr_small");
    assert_eq!(std::fs::read(out.path().join("mr_small_Liver.nii.gz")).unwrap(), b"marker");
}

#[test]
fn an_unknown_prompt_fails_the_batch_before_any_case_starts() {
    let out = tempfile::tempdir().unwrap();
    let jobs = vec![Job::from_path(image("mr_small"), strings(&["Liver", "pancreatic duct"]))];
    let batch = Batch::new(jobs, masks_only(out.path())).unwrap();
    let seen = Seen::default();
    let err = predictor().run_batch(&batch, &|e| seen.push(e)).unwrap_err().to_string();
    assert!(err.contains("pancreatic duct") && err.contains("no text model"), "{err}");
    assert!(seen.lines().is_empty(), "{:?}", seen.lines());
}

#[test]
fn bad_jobs_are_refused_before_any_work_naming_the_culprit() {
    let out = tempfile::tempdir().unwrap();
    let err = |jobs: Vec<Job>| Batch::new(jobs, masks_only(out.path())).unwrap_err().to_string();
    assert!(err(vec![]).contains("no input images"));
    let e = err(vec![Job::from_path(image("mr_small"), vec![])]);
    assert!(e.contains("mr_small.nii.gz") && e.contains("no prompts"), "{e}");
    let e = err(vec![Job::from_path(image("mr_small"), strings(&["left kidney", "left_kidney"]))]);
    assert!(e.contains("\"left kidney\"") && e.contains("left_kidney.nii.gz"), "{e}");
    // Two images with one case name would write the same files.
    let other = out.path().join("elsewhere");
    std::fs::create_dir(&other).unwrap();
    std::fs::copy(image("mr_small"), other.join("mr_small.nii.gz")).unwrap();
    let e = err(vec![
        Job::from_path(image("mr_small"), strings(&["Liver"])),
        Job::from_path(other.join("mr_small.nii.gz"), strings(&["Liver"])),
    ]);
    assert!(e.contains("elsewhere") && e.contains("mr_small_Liver.nii.gz"), "{e}");
    // The same image twice is one set of files, not a clash.
    let same = vec![
        Job::from_path(image("mr_small"), strings(&["Liver"])),
        Job::from_path(image("mr_small"), strings(&["Liver"])),
    ];
    assert!(Batch::new(same, masks_only(out.path())).is_ok());
    let e = Batch::new(
        vec![Job::from_path(image("mr_small"), strings(&["Liver"]))],
        BatchOptions::new(out.path(), vec![]),
    )
    .unwrap_err();
    assert_eq!(e.option(), Some("writers"));
    // An output folder that cannot be made.
    let file = out.path().join("a_file");
    std::fs::write(&file, b"x").unwrap();
    let e = Batch::new(
        vec![Job::from_path(image("mr_small"), strings(&["Liver"]))],
        masks_only(&file.join("sub")),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("a_file"), "{e}");
}

#[test]
fn jobs_accept_a_string_or_a_list_of_prompts() {
    let jobs = jobs_from_json(
        r#"[{"image": "a.nii.gz", "prompts": "liver"}, {"image": "b.nii", "prompts": ["x", "y"]}]"#,
    )
    .unwrap();
    assert_eq!(jobs[0].name, "a");
    assert!(matches!(&jobs[0].input, voxtell_infer::Input::Path(p) if p == Path::new("a.nii.gz")));
    assert_eq!(jobs[0].prompts, strings(&["liver"]));
    assert_eq!(jobs[1].prompts, strings(&["x", "y"]));
    for bad in
        [r#"[{"image": 3, "prompts": "x"}]"#, r#"[{"image": "a", "prompts": [1]}]"#, "{", r#"{"image": "a"}"#]
    {
        let e = jobs_from_json(bad).unwrap_err();
        assert_eq!(e.option(), Some("jobs"), "{bad}: {e}");
    }
}

#[test]
fn inputs_are_a_folder_of_nifti_files_or_files_in_order() {
    let folder = root().join("infer/predict/images");
    let prompts = strings(&["Liver"]);
    let names: Vec<String> = jobs_from_inputs(std::slice::from_ref(&folder), &prompts)
        .unwrap()
        .into_iter()
        .map(|j| j.name)
        .collect();
    assert_eq!(names, ["ct_oblique", "mr_small"]);
    let twice = [image("mr_small"), image("ct_oblique"), image("mr_small")];
    let names: Vec<String> =
        jobs_from_inputs(&twice, &prompts).unwrap().into_iter().map(|j| j.name).collect();
    assert_eq!(names, ["mr_small", "ct_oblique"]);
    let missing = folder.join("no_such.nii.gz");
    let e = jobs_from_inputs(&[missing], &prompts).unwrap_err().to_string();
    assert!(e.contains("no_such.nii.gz"), "{e}");
    let e = jobs_from_inputs(&[folder.clone(), image("mr_small")], &prompts).unwrap_err().to_string();
    assert!(e.contains("only input"), "{e}");
    assert_eq!(jobs_from_inputs(&[], &prompts).unwrap_err().option(), Some("inputs"));
    assert_eq!(jobs_from_inputs(&[folder], &[]).unwrap_err().option(), Some("prompts"));
}

#[test]
fn a_dicom_series_gets_a_seg_whose_frames_are_its_nifti_masks_and_a_nifti_input_is_refused() {
    use dicom_dictionary_std::tags;
    use voxtell_infer::DicomSegFile;
    let series = root().join("io/dicom/ct_axial");
    let out = tempfile::tempdir().unwrap();
    let prompts = strings(&["Liver", "left kidney"]);
    let writers: Vec<Arc<dyn OutputWriter>> = vec![Arc::new(MaskFiles), Arc::new(DicomSegFile::default())];
    let batch = Batch::new(
        vec![Job::from_path(&series, prompts.clone())],
        BatchOptions::new(out.path(), writers.clone()),
    )
    .unwrap();
    let mut p = predictor();
    let records = p.run_batch(&batch, &|_| {}).unwrap();
    assert_eq!(records[0].status, CaseStatus::Written, "{records:?}");
    let masks: Vec<voxtell_io::Volume> = ["Liver", "left_kidney"]
        .iter()
        .map(|s| voxtell_io::read_nifti(out.path().join(format!("ct_axial_{s}.nii.gz"))).unwrap())
        .collect();
    let non_empty: Vec<usize> = (0..2).filter(|&i| masks[i].data.iter().any(|&v| v != 0.0)).collect();
    let empty: Vec<String> = (0..2).filter(|i| !non_empty.contains(i)).map(|i| prompts[i].clone()).collect();
    assert_eq!(records[0].empty_prompts, empty);
    let seg = out.path().join("ct_axial_seg.dcm");
    eprintln!("prompts with a non-empty mask: {non_empty:?}");
    if non_empty.is_empty() {
        assert!(!seg.exists() && out.path().join("ct_axial_seg.json").exists());
    } else {
        let obj = dicom_object::open_file(&seg).unwrap();
        let source = voxtell_io::read_dicom_source(&series, &Default::default()).unwrap();
        let rows = source.rows;
        let cols = source.columns;
        let data = obj.element(tags::PIXEL_DATA).unwrap().to_bytes().unwrap().to_vec();
        let segments = obj.element(tags::SEGMENT_SEQUENCE).unwrap().items().unwrap().to_vec();
        assert_eq!(segments.len(), non_empty.len());
        let frames =
            obj.element(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE).unwrap().items().unwrap().to_vec();
        // Rebuild each segment's mask in the source grid from the frames.
        let mut rebuilt: Vec<ndarray::Array3<f32>> =
            non_empty.iter().map(|_| ndarray::Array3::zeros(masks[0].data.raw_dim())).collect();
        for (f, item) in frames.iter().enumerate() {
            let segment = item.element(tags::SEGMENT_IDENTIFICATION_SEQUENCE).unwrap().items().unwrap()[0]
                .element(tags::REFERENCED_SEGMENT_NUMBER)
                .unwrap()
                .to_int::<usize>()
                .unwrap();
            let derivation = &item.element(tags::DERIVATION_IMAGE_SEQUENCE).unwrap().items().unwrap()[0];
            let uid = derivation.element(tags::SOURCE_IMAGE_SEQUENCE).unwrap().items().unwrap()[0]
                .element(tags::REFERENCED_SOP_INSTANCE_UID)
                .unwrap()
                .to_str()
                .unwrap()
                .trim_end_matches('\0')
                .to_string();
            let k = source
                .slices
                .iter()
                .position(|s| s.sop_instance_uid.as_deref() == Some(uid.as_str()))
                .unwrap();
            for p in 0..rows * cols {
                let bit = f * rows * cols + p;
                if (data[bit / 8] >> (bit % 8)) & 1 == 1 {
                    rebuilt[segment - 1][[p % cols, p / cols, k]] = 1.0;
                }
            }
        }
        for (s, &i) in non_empty.iter().enumerate() {
            assert_eq!(rebuilt[s], masks[i].data, "segment {} (prompt {})", s + 1, prompts[i]);
        }
    }
    // Finished: skipped when asked.
    let again = Batch::new(
        vec![Job::from_path(&series, prompts.clone())],
        BatchOptions { skip_existing: true, ..BatchOptions::new(out.path(), writers.clone()) },
    )
    .unwrap();
    assert!(again.cases()[0].skip);
    // A NIfTI input cannot have a SEG: refused before any work, naming the input.
    let e =
        Batch::new(vec![Job::from_path(image("mr_small"), prompts)], BatchOptions::new(out.path(), writers))
            .unwrap_err()
            .to_string();
    assert!(e.contains("DICOM source series") && e.contains("mr_small"), "{e}");
}

#[test]
fn a_series_without_a_frame_of_reference_fails_before_it_is_predicted() {
    use voxtell_infer::DicomSegFile;
    let dir = tempfile::tempdir().unwrap();
    let series = dir.path().join("no_for");
    std::fs::create_dir(&series).unwrap();
    for entry in std::fs::read_dir(root().join("io/dicom/ct_axial")).unwrap() {
        let path = entry.unwrap().path();
        let mut obj = dicom_object::open_file(&path).unwrap();
        obj.remove_element(dicom_dictionary_std::tags::FRAME_OF_REFERENCE_UID);
        obj.write_to_file(series.join(path.file_name().unwrap())).unwrap();
    }
    let out = dir.path().join("out");
    let writers: Vec<Arc<dyn OutputWriter>> = vec![Arc::new(MaskFiles), Arc::new(DicomSegFile::default())];
    let batch =
        Batch::new(vec![Job::from_path(&series, strings(&["Liver"]))], BatchOptions::new(&out, writers))
            .unwrap();
    let records = predictor().run_batch(&batch, &|_| {}).unwrap();
    assert_eq!(records[0].status, CaseStatus::Failed, "{records:?}");
    let e = records[0].error.clone().unwrap();
    assert!(e.contains("FrameOfReferenceUID") && e.contains("no_for"), "{e}");
    assert_eq!(records[0].tiles, 0, "refused before the network ran");
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0, "nothing written");
}

#[test]
fn a_seg_has_no_segment_for_an_empty_mask_and_a_note_when_every_mask_is_empty() {
    use voxtell_infer::{DicomSegFile, Input, PredictedCase};
    let series = root().join("io/dicom/ct_axial");
    let input = Input::Path(series.clone());
    let (image, source) = input.read_ras_with_source(&Default::default()).unwrap();
    let (volume, _) = voxtell_io::read_dicom_series_with_source(&series, &Default::default()).unwrap();
    let prompts = strings(&["Liver", "left kidney"]);
    let mut masks = predictor().predict(&volume, &["Liver", "left kidney"]).unwrap();
    // Prompt 0 with one voxel, prompt 1 empty.
    let mut one = ndarray::Array3::<u8>::zeros(masks.ras_shape());
    let b = masks.bbox();
    one[[b[0][0], b[1][0], b[2][0]]] = 1;
    masks.set_mask(0, &one).unwrap();
    masks.set_mask(1, &ndarray::Array3::zeros(masks.ras_shape())).unwrap();
    let out = tempfile::tempdir().unwrap();
    macro_rules! case {
        ($masks:expr) => {
            PredictedCase {
                name: "ct",
                input: &input,
                prompts: &prompts,
                masks: $masks,
                image: &image,
                source: source.as_deref(),
            }
        };
    }
    let w = DicomSegFile::default();
    let written = w.write(&case!(&masks), out.path()).unwrap();
    assert_eq!(written, [out.path().join("ct_seg.dcm")]);
    let obj = dicom_object::open_file(&written[0]).unwrap();
    let segments = obj.element(dicom_dictionary_std::tags::SEGMENT_SEQUENCE).unwrap().items().unwrap().len();
    let frames =
        obj.element(dicom_dictionary_std::tags::NUMBER_OF_FRAMES).unwrap().to_int::<usize>().unwrap();
    assert_eq!((segments, frames), (1, 1));
    // Every mask empty: the note replaces the SEG of the earlier run.
    masks.set_mask(0, &ndarray::Array3::zeros(masks.ras_shape())).unwrap();
    let written = w.write(&case!(&masks), out.path()).unwrap();
    assert_eq!(written, [out.path().join("ct_seg.json")]);
    assert!(!out.path().join("ct_seg.dcm").exists());
    let note: serde_json::Value = serde_json::from_slice(&std::fs::read(&written[0]).unwrap()).unwrap();
    assert_eq!(note["empty_prompts"], serde_json::json!(["Liver", "left kidney"]));
    assert!(w.finished(out.path(), "ct", &prompts));
}
