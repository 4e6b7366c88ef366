//! The pipeline against the official `VoxTellPredictor` (fixtures from
//! `tools/gen_infer_fixtures.py`), in layers: (a) crop box and normalised input, (b) bit-exact
//! f16 accumulation with a stub network, (c) the network on a stored tile, (d) end to end with a
//! small real network, (e) f32 accumulation against an f64 reference.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use half::f16;
use ndarray::{Array3, Array4, s};
use voxtell_infer::sliding::{Accumulate, Logits, Tile, Window};
use voxtell_infer::{Masks, Plan, PredictOptions, Predictor, segment};
use voxtell_infer::{preprocess, window};
use voxtell_text::{EmbeddingBank, PromptVectors};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn dir() -> PathBuf {
    root().join("infer/predict")
}

fn config() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("config.json")).unwrap()).unwrap()
}

fn tensors(file: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir().join(file), &Device::Cpu).unwrap()
}

fn usizes(v: &serde_json::Value) -> Vec<usize> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect()
}

fn arr3(v: &serde_json::Value) -> [usize; 3] {
    usizes(v).try_into().unwrap()
}

fn bbox(v: &serde_json::Value) -> preprocess::Bbox {
    let b: Vec<Vec<usize>> = v.as_array().unwrap().iter().map(usizes).collect();
    [[b[0][0], b[0][1]], [b[1][0], b[1][1]], [b[2][0], b[2][1]]]
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()).collect()
}

fn ras(case: &serde_json::Value) -> voxtell_io::RasVolume {
    voxtell_io::read(dir().join(case["file"].as_str().unwrap())).unwrap().to_ras().unwrap()
}

fn f16_array(t: &Tensor) -> Array4<f16> {
    let d = t.dims4().unwrap();
    Array4::from_shape_vec(d, t.flatten_all().unwrap().to_vec1::<f16>().unwrap()).unwrap()
}

fn f32_array3(t: &Tensor) -> Array3<f32> {
    let d = t.dims3().unwrap();
    Array3::from_shape_vec(d, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()).unwrap()
}

/// The stub network of the generator: `((h mod 4001) − 2000) / 128` with
/// `h = (t·73856093) ^ (p·19349663) ^ (i·83492791) ^ (j·2654435761) ^ (k·97531)` (u64 wrapping);
/// `fine`: `((h mod 2^24) − 2^23) / 2^20` (24 significant bits: `pred · g` rounds in f32 and the
/// f16 accumulator meets double rounding).
fn stub_tile(t: usize, prompts: std::ops::Range<usize>, patch: [usize; 3], fine: bool) -> Vec<f32> {
    let mut out = Vec::with_capacity(prompts.len() * patch.iter().product::<usize>());
    let m = |x: usize, c: u64| (x as u64).wrapping_mul(c);
    for p in prompts {
        for i in 0..patch[0] {
            for j in 0..patch[1] {
                for k in 0..patch[2] {
                    let h = m(t, 73856093) ^ m(p, 19349663) ^ m(i, 83492791) ^ m(j, 2654435761) ^ m(k, 97531);
                    out.push(if fine {
                        ((h % (1 << 24)) as i64 - (1 << 23)) as f32 / (1 << 20) as f32
                    } else {
                        ((h % 4001) as i64 - 2000) as f32 / 128.0
                    });
                }
            }
        }
    }
    out
}

fn plan(group: usize) -> Plan {
    Plan {
        tiles: 0,
        prompt_group: group,
        decoder_group: group,
        passes: 0,
        estimated_bytes: 0,
        budget_bytes: 0,
        held_bytes: 0,
    }
}

/// Run the pipeline with the stub network, `group` prompts per pass.
fn run_stub(accumulate: Accumulate, group: usize, fine: bool) -> voxtell_infer::Masks {
    let cfg = config();
    let stub = &cfg["stub"];
    let case = &cfg["cases"][stub["case"].as_str().unwrap()];
    let patch = arr3(&stub["patch_size"]);
    let prompts = strings(&stub["prompts"]);
    let options = PredictOptions { accumulate, keep_logits: true, ..PredictOptions::default() };
    segment(
        &ras(case),
        &prompts,
        patch,
        &options,
        plan(group),
        |tile: &Tile<'_>, pass| {
            let first = pass * group;
            let last = (first + group).min(prompts.len());
            Ok(stub_tile(tile.index, first..last, patch, fine))
        },
        |_, _| true,
    )
    .unwrap()
}

#[test]
fn a_crop_box_and_normalised_input_match() {
    let cfg = config();
    let patch = arr3(&cfg["patch_size"]);
    for (name, case) in cfg["cases"].as_object().unwrap() {
        let r = ras(case);
        assert_eq!(r.data.shape(), &arr3(&case["orig_shape"]), "{name}");
        let b = preprocess::nonzero_bbox(r.data.view());
        assert_eq!(b, bbox(&case["bbox"]), "{name}");
        let cropped = preprocess::crop_and_normalize(r.data.view(), &b);
        let (padded, offset) = preprocess::pad_to_patch(cropped, patch);
        let below: Vec<usize> =
            case["pad"].as_array().unwrap().iter().map(|p| p["below"].as_u64().unwrap() as usize).collect();
        assert_eq!(offset.to_vec(), below, "{name}");
        let expected = f32_array3(&tensors(&format!("{name}.safetensors"))["input_padded"]);
        assert_eq!(padded.shape(), expected.shape(), "{name}");
        let mut worst = 0u32;
        for (a, e) in padded.iter().zip(expected.iter()) {
            let ulps = (a.to_bits() as i64 - e.to_bits() as i64).unsigned_abs() as u32;
            // Around zero the bit distance across the sign is meaningless; compare in value.
            let ulps = if a.signum() != e.signum() { ((a - e).abs() / f32::EPSILON) as u32 } else { ulps };
            worst = worst.max(ulps);
        }
        assert!(worst <= 2, "{name}: normalised input off by {worst} ulps");
        // The tile origins of the official run.
        let origins: Vec<[usize; 3]> = case["tile_origins"].as_array().unwrap().iter().map(arr3).collect();
        let padded_shape = [padded.shape()[0], padded.shape()[1], padded.shape()[2]];
        assert_eq!(window::tiles(padded_shape, patch, 0.5), origins, "{name}");
    }
}

#[test]
fn b_f16_accumulation_is_bit_exact_with_a_stub_network() {
    let cfg = config();
    let stub = &cfg["stub"];
    let t = tensors("stub.safetensors");
    let expected = f16_array(&t["logits"]);
    let masks_t = &t["masks"];
    let (n, d0, d1, d2) = masks_t.dims4().unwrap();
    let exp_masks =
        Array4::from_shape_vec((n, d0, d1, d2), masks_t.flatten_all().unwrap().to_vec1::<u8>().unwrap())
            .unwrap();
    let out = run_stub(Accumulate::F16, 2, false);
    assert_eq!(out.plan().tiles, stub["n_tiles"].as_u64().unwrap() as usize);
    assert_eq!(out.bbox(), &bbox(&stub["bbox"]));
    for i in 0..n {
        let Logits::F16(ours) = out.logits(i).unwrap() else { panic!("f16 expected") };
        let theirs = expected.slice(s![i, .., .., ..]);
        assert_eq!(ours.shape(), theirs.shape());
        let diff = ours.iter().zip(theirs.iter()).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
        assert_eq!(diff, 0, "prompt {i}: {diff} logits differ in their f16 bits");
        assert_eq!(out.mask(i).unwrap(), exp_masks.slice(s![i, .., .., ..]), "prompt {i} mask");
    }
    // The combined map: label i + 1, later prompts overwrite.
    let mut combined = Array3::<u16>::zeros((d0, d1, d2));
    for i in 0..n {
        ndarray::Zip::from(&mut combined).and(exp_masks.slice(s![i, .., .., ..])).for_each(|c, &m| {
            if m != 0 {
                *c = i as u16 + 1;
            }
        });
    }
    assert_eq!(out.combined(), combined);
}

#[test]
fn b_f16_accumulation_rounds_twice_like_pytorch() {
    // 24-bit stub values: `pred · g` rounds in f32 and `f16(f32(acc) + p)` differs now and then
    // from a single rounding of the exact sum; the official bits need the f32 step.
    let expected = f16_array(&tensors("stub.safetensors")["logits_fine"]);
    let out = run_stub(Accumulate::F16, 2, true);
    for i in 0..expected.dim().0 {
        let Logits::F16(ours) = out.logits(i).unwrap() else { panic!("f16 expected") };
        let theirs = expected.slice(s![i, .., .., ..]);
        let diff = ours.iter().zip(theirs.iter()).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
        assert_eq!(diff, 0, "prompt {i}: {diff} logits differ in their f16 bits");
    }
}

#[test]
fn b_prompt_groups_give_the_same_bits() {
    let one_pass = run_stub(Accumulate::F16, 2, false);
    let two_passes = run_stub(Accumulate::F16, 1, false);
    assert_eq!(two_passes.plan().passes, 2);
    for i in 0..2 {
        let (Logits::F16(a), Logits::F16(b)) = (one_pass.logits(i).unwrap(), two_passes.logits(i).unwrap())
        else {
            panic!("f16 expected")
        };
        assert!(a.iter().zip(b.iter()).all(|(x, y)| x.to_bits() == y.to_bits()), "prompt {i}");
    }
}

#[test]
fn c_the_network_matches_on_a_stored_tile() {
    let cfg = config();
    let case = &cfg["cases"]["ct_oblique"];
    let t = tensors("ct_oblique.safetensors");
    let input = f32_array3(&t["input_padded"]);
    let expected = t["tile_out"].flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let origin = arr3(&case["tile_out_origin"]);
    let patch = arr3(&cfg["patch_size"]);
    let tile: Vec<f32> = input
        .slice(s![
            origin[0]..origin[0] + patch[0],
            origin[1]..origin[1] + patch[1],
            origin[2]..origin[2] + patch[2]
        ])
        .iter()
        .copied()
        .collect();
    let mut p = predictor(Accumulate::F16);
    let prompts = strings(&case["prompts"]);
    let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let vectors = p.vectors(&refs).unwrap();
    let text =
        Tensor::from_vec(vectors.concat(), (1, prompts.len(), vectors[0].len()), &Device::Cpu).unwrap();
    let image = Tensor::from_vec(tile, (1, 1, patch[0], patch[1], patch[2]), &Device::Cpu).unwrap();
    let out = p.model().forward(&image, &text).unwrap();
    let ours = out.outputs[0].flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = ours.iter().zip(&expected).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(worst <= 1e-4 * scale, "tile output off by {worst} (max |out| {scale})");
}

fn predictor(accumulate: Accumulate) -> Predictor {
    let bank = EmbeddingBank::read(dir().join("bank.npz")).unwrap();
    let vectors = PromptVectors::new(bank, None, DType::F32, &Device::Cpu);
    let options = PredictOptions { accumulate, keep_logits: true, ..PredictOptions::default() };
    Predictor::from_dir(root().join("fusion/cfg_a"), vectors, options, &Device::Cpu).unwrap()
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Predict every case of config.json with `p` and hand `check` the case's name, its entry, its
/// prompts, the masks and the official logits of each prompt (`[prompt, …]`, f16).
fn each_case(
    p: &mut Predictor,
    mut check: impl FnMut(&str, &serde_json::Value, &[String], &Masks, &Array4<f16>),
) {
    let cfg = config();
    for (name, case) in cfg["cases"].as_object().unwrap() {
        let prompts = strings(&case["prompts"]);
        let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
        let volume = voxtell_io::read(dir().join(case["file"].as_str().unwrap())).unwrap();
        let masks = p.predict(&volume, &refs).unwrap();
        let official = f16_array(&tensors(&format!("{name}.safetensors"))["logits"]);
        check(name, case, &prompts, &masks, &official);
    }
}

/// Prompt `i`'s logits, ours and the official ones, in f32.
fn logits_pair(masks: &Masks, official: &Array4<f16>, i: usize) -> (Array3<f32>, Array3<f32>) {
    (masks.logits(i).unwrap().to_f32(), official.slice(s![i, .., .., ..]).mapv(f16::to_f32))
}

#[test]
fn d_end_to_end_masks_probabilities_and_files_match_the_official_tool() {
    let mut p = predictor(Accumulate::F16);
    let out_dir = tempfile::tempdir().unwrap();
    each_case(&mut p, |name, case, prompts, masks, official| {
        let mut dps = Vec::new();
        for (i, prompt) in prompts.iter().enumerate() {
            let (ours, theirs) = logits_pair(masks, official, i);
            assert_eq!(ours.shape(), theirs.shape());
            let mut mismatched = 0;
            for (a, b) in ours.iter().zip(theirs.iter()) {
                if (*a > 0.0) != (*b > 0.0) {
                    assert!(
                        b.abs() < 1e-2,
                        "{name} {prompt:?}: mask differs where the official logit is {b}"
                    );
                    mismatched += 1;
                }
                dps.push((sigmoid(*a) - sigmoid(*b)).abs());
            }
            // Write the mask and compare it with the official file: data in the file's own
            // voxel order, shape, affine and datatype.
            let safe = case["safe_names"][i].as_str().unwrap();
            let file = format!("{name}_{safe}.nii.gz");
            masks.write_mask(i, out_dir.path().join(&file), voxtell_io::WriteOptions::default()).unwrap();
            let ours_file = voxtell_io::read_nifti(out_dir.path().join(&file)).unwrap();
            let theirs_file = voxtell_io::read_nifti(dir().join("official").join(&file)).unwrap();
            assert_eq!(ours_file.data.shape(), theirs_file.data.shape(), "{file}");
            let differing =
                ours_file.data.iter().zip(theirs_file.data.iter()).filter(|(a, b)| a != b).count();
            assert_eq!(differing, mismatched, "{file}: voxel differences beyond the near-zero logits");
            for (ra, rb) in ours_file.affine.iter().zip(theirs_file.affine.iter()) {
                for (a, b) in ra.iter().zip(rb) {
                    assert!((a - b).abs() <= 1e-6 * (1.0 + b.abs()), "{file}: affine {a} vs {b}");
                }
            }
            let hdr = |path: &Path| nifti::NiftiHeader::from_file(path).unwrap();
            let (ho, ht) = (hdr(&out_dir.path().join(&file)), hdr(&dir().join("official").join(&file)));
            assert_eq!(
                (ho.datatype, ho.sform_code, ho.qform_code),
                (ht.datatype, ht.sform_code, ht.qform_code)
            );
            assert_eq!(ho.dim, ht.dim, "{file}");
        }
        dps.sort_by(f32::total_cmp);
        let p9999 = dps[((dps.len() - 1) as f64 * 0.9999) as usize];
        let max = dps[dps.len() - 1];
        assert!(p9999 <= 2e-3 && max <= 2.5e-2, "{name}: |Δp| 99.99th {p9999}, max {max}");
        // The combined map against the official one.
        let combined_file = out_dir.path().join(format!("{name}.nii.gz"));
        masks.write_combined(&combined_file, voxtell_io::WriteOptions::default()).unwrap();
        let ours = voxtell_io::read_nifti(&combined_file).unwrap().data;
        let theirs =
            voxtell_io::read_nifti(dir().join(case["official_combined"].as_str().unwrap())).unwrap().data;
        let differing = ours.iter().zip(theirs.iter()).filter(|(a, b)| a != b).count();
        assert!(differing * 1000 <= ours.len(), "{name}: combined map differs in {differing} voxels");
    });
}

#[test]
fn e_f32_accumulation_is_within_1e5_of_an_f64_reference() {
    let cfg = config();
    let stub = &cfg["stub"];
    let case = &cfg["cases"][stub["case"].as_str().unwrap()];
    let patch = arr3(&stub["patch_size"]);
    let n = strings(&stub["prompts"]).len();
    let out = run_stub(Accumulate::F32, n, false);
    // The f64 reference: same tiles, same (f16-rounded) Gaussian, f64 sums.
    let r = ras(case);
    let b = preprocess::nonzero_bbox(r.data.view());
    let cropped = preprocess::crop_and_normalize(r.data.view(), &b);
    let crop_shape = [cropped.shape()[0], cropped.shape()[1], cropped.shape()[2]];
    let (padded, offset) = preprocess::pad_to_patch(cropped, patch);
    let shape = [padded.shape()[0], padded.shape()[1], padded.shape()[2]];
    let w = Window::new(shape, patch, 0.5).unwrap();
    let g: Vec<f64> = w.gaussian().iter().map(|v| f64::from(v.to_f32())).collect();
    let mut acc = vec![Array3::<f64>::zeros(shape); n];
    let mut weights = Array3::<f64>::zeros(shape);
    for (t, o) in w.tiles().iter().enumerate() {
        let pred = stub_tile(t, 0..n, patch, false);
        let mut idx = 0;
        for (pi, a) in acc.iter_mut().enumerate() {
            let mut gi = 0;
            for i in 0..patch[0] {
                for j in 0..patch[1] {
                    for k in 0..patch[2] {
                        a[[o[0] + i, o[1] + j, o[2] + k]] += f64::from(pred[idx]) * g[gi];
                        if pi == 0 {
                            weights[[o[0] + i, o[1] + j, o[2] + k]] += g[gi];
                        }
                        idx += 1;
                        gi += 1;
                    }
                }
            }
        }
    }
    for (i, a) in acc.iter().enumerate() {
        let reference = (a / &weights).slice_move(s![
            offset[0]..offset[0] + crop_shape[0],
            offset[1]..offset[1] + crop_shape[1],
            offset[2]..offset[2] + crop_shape[2]
        ]);
        let Logits::F32(ours) = out.logits(i).unwrap() else { panic!("f32 expected") };
        let scale = reference.iter().fold(0f64, |m, v| m.max(v.abs()));
        let worst =
            ours.iter().zip(reference.iter()).fold(0f64, |m, (a, b)| m.max((f64::from(*a) - b).abs()));
        assert!(worst <= 1e-5 * scale, "prompt {i}: {worst} vs max |L| {scale}");
    }
}

#[test]
fn f_on_the_cpu_all_prompts_share_a_pass_and_the_decoder_takes_one_at_a_time() {
    let mut p = predictor(Accumulate::F16);
    let shape = [40, 48, 56];
    // Ample memory: one pass for all prompts, decoder still one prompt at a time.
    p.set_options(PredictOptions { max_memory: Some(64 << 30), ..PredictOptions::default() });
    let plan = p.plan(shape, 5).unwrap();
    assert_eq!((plan.prompt_group, plan.passes, plan.decoder_group), (5, 1, 1));
    assert!(plan.estimated_bytes <= plan.budget_bytes);
    // A budget below one prompt's working set is refused, naming the budget.
    p.set_options(PredictOptions { max_memory: Some(1 << 10), ..PredictOptions::default() });
    let err = p.plan(shape, 5).unwrap_err().to_string();
    assert!(err.contains("budget"), "{err}");
}

/// `ConvPrecision::Bf16` on the end-to-end fixtures: the masks stay close to the official tool's
/// (most voxels; the fixture network is small and random, so many logits lie near 0) and the
/// logits within a small fraction of their range. Where the CPU lacks AVX-512 BF16 the setting
/// falls back to f32 and the masks are the f32 ones.
#[test]
fn g_bf16_precision_stays_close_to_the_official_masks() {
    let mut p = predictor(Accumulate::F16);
    p.set_options(PredictOptions { precision: voxtell_infer::ConvPrecision::Bf16, ..p.options().clone() });
    each_case(&mut p, |name, _case, prompts, masks, official| {
        for (i, prompt) in prompts.iter().enumerate() {
            let (ours, theirs) = logits_pair(masks, official, i);
            let scale = theirs.iter().fold(0f32, |m, v| m.max(v.abs()));
            let worst = ours.iter().zip(theirs.iter()).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            let same = ours.iter().zip(theirs.iter()).filter(|(a, b)| (**a > 0.0) == (**b > 0.0)).count();
            let agreement = same as f64 / ours.len() as f64;
            eprintln!(
                "{name} {prompt:?}: bf16 masks agree on {:.4} %, max |Δlogit| {worst:.4} of {scale:.3}",
                100.0 * agreement
            );
            assert!(agreement >= 0.997, "{name} {prompt:?}: bf16 masks agree on only {agreement}");
            assert!(worst <= 0.02 * scale, "{name} {prompt:?}: max |Δlogit| {worst} of {scale}");
        }
    });
}
