#!/usr/bin/env python3
"""Drive `voxtell serve` with the REAL napari-voxtell 0.2.0 remote client, headless.

Run through tools/serve_napari_check.sh (it makes tools/.venv-napari: napari-voxtell and
nnunetv2 installed with --no-deps, plus httpx, blosc2, numpy, nibabel; all pinned). Manual
tool: CI never runs it. Exits 1 on any failed check.

    tools/.venv-napari/bin/python tools/serve_napari_check.py [--binary target/debug/voxtell]

The client is `napari_voxtell.remote.VoxTellRemoteClient`, imported WITHOUT napari, qtpy or
torch (docs/server-api.md §2.11: the package's __init__ imports the widget and napari, so a stub
package module pointing at the installed folder stands in for it). References are computed
locally with nnU-Net's `NibabelIOWithReorient` (nnunetv2 2.8.1, with a stub `SimpleITK` module:
the nibabel reader module imports it but never uses it).

What it does, against a server it starts on 127.0.0.1:<ephemeral> (tiny model
fixtures/fusion/cfg_a, bank fixtures/infer/predict/bank.npz) and stops at the end by its pid:
- healthz, capabilities;
- upload_image of fixtures/infer/predict/images/{ct_oblique,mr_small} as .nii.gz and as .nii
  (gunzipped), include_image True and False: (a) the array equals read_images(...)[0] exactly,
  X-Meta shape/spacing equal the reader's (and the raw X-Meta text equals Python's json.dumps);
- start_job with the case's prompts (a list, fixtures/infer/predict/config.json) and with a
  single string, stream_events to the end (lines printed), get_result: (b) the masks against
  the official predictor's committed masks (official/*.nii.gz, read with the same reader),
  differing voxels counted per prompt;
- export(image_id, uint16 combined label map, as the widget builds it): (c) against
  write_seg(labelmap, path, props) run locally (data, dtype, affine, sform/qform codes, other
  header fields) and against the committed official_combined/*.nii.gz;
- cancel of a job on a 128^3 synthetic volume after its first progress line;
- a zip of a DICOM series (fixtures/io/dicom/<name>) uploaded with httpx (the client only sends
  NIfTI): shape, spacing and voxels against the committed SimpleITK reference
  (<name>_expected.npy + <name>_affine.npy written as NIfTI and read with the nnU-Net reader),
  and a job on it;
- a few status codes of the contract (404/400/409/422/401) and the reconnect replay;
- extras: keep_largest against scipy.ndimage.label (6-connectivity) on the plain masks, repeated
  and differently-cased prompts, a job queued behind another (its `queued` line, cancel while
  queued), two concurrent streams of one job, a 4-D upload;
- the same with an API key (--api-key-file): no key and a wrong key get 401, /healthz stays open.
"""
import argparse
import gzip
import importlib.util
import io
import json
import os
import sys
import tempfile
import time
import types
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve_common  # noqa: E402
from serve_common import ROOT, table  # noqa: E402


def load_client():
    """VoxTellRemoteClient and unpack/pack_array from the installed napari-voxtell, without
    running napari_voxtell/__init__.py (which imports the widget, napari and torch)."""
    spec = importlib.util.find_spec("napari_voxtell")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("napari-voxtell is not installed (run tools/serve_napari_check.sh)")
    stub = types.ModuleType("napari_voxtell")
    stub.__path__ = list(spec.submodule_search_locations)
    stub.__file__ = spec.origin
    sys.modules["napari_voxtell"] = stub
    from napari_voxtell.remote import VoxTellRemoteClient
    from napari_voxtell.remote.serialization import pack_array, unpack_array
    return VoxTellRemoteClient, pack_array, unpack_array


def load_reader():
    """nnU-Net's NibabelIOWithReorient with a stub SimpleITK module (imported, never used)."""
    if "SimpleITK" not in sys.modules:
        try:
            import SimpleITK  # noqa: F401
        except ImportError:
            sys.modules["SimpleITK"] = types.ModuleType("SimpleITK")
    from nnunetv2.imageio.nibabel_reader_writer import NibabelIOWithReorient
    return NibabelIOWithReorient


VoxTellRemoteClient, pack_array, unpack_array = load_client()
NibabelIOWithReorient = load_reader()
import httpx  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

PREDICT = ROOT / "fixtures/infer/predict"
DICOM = ROOT / "fixtures/io/dicom"
CONFIG = json.loads((PREDICT / "config.json").read_text())

RESULTS = []  # (section, check, ok, detail)
NOTES = []    # discrepancies worth reporting even when the check passes


def check(section, name, ok, detail=""):
    RESULTS.append((section, name, bool(ok), detail))
    print(f"  [{'PASS' if ok else 'FAIL'}] {section}: {name}{' - ' + detail if detail else ''}", flush=True)
    return ok


def guarded(section, name):
    """Decorator-like helper: run fn, record an exception as a failed check."""
    def wrap(fn):
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - any failure is a failed check
            check(section, name, False, f"{type(e).__name__}: {e}")
            return None
    return wrap


def read_ref(path):
    data, props = NibabelIOWithReorient().read_images([str(path)])
    return data[0], props


def print_events(events, limit=None):
    for i, ev in enumerate(events):
        if limit is None or i < limit or i >= len(events) - 2:
            print("    event:", json.dumps(ev))
        elif i == limit:
            print(f"    ... ({len(events) - limit - 2} more progress lines)")


def run_job(client, image_id, prompts, label, limit=None):
    t0 = time.monotonic()
    job_id = client.start_job(image_id, prompts)
    events = list(client.stream_events(job_id))
    wall = time.monotonic() - t0
    print(f"  job {label}: {len(events)} event lines in {wall:.2f} s")
    print_events(events, limit)
    return job_id, events


def check_events(section, events, n_prompts):
    """Progress lines {done, total} with 1 <= done <= total, then exactly one terminal line."""
    ok = bool(events) and events[-1] == {"status": "done"}
    progress = [e for e in events[:-1] if "done" in e]
    other = [e for e in events[:-1] if "done" not in e]
    ok = ok and all(1 <= e["done"] <= e["total"] for e in progress) and progress
    ok = ok and not any("status" in e for e in events[:-1])
    # The widget ignores lines without status/done unless event == oom_fallback.
    ok = ok and all(e.get("event") != "oom_fallback" or "message" in e for e in other)
    totals = sorted({e["total"] for e in progress})
    check(section, "event stream", ok,
          f"{len(progress)} progress lines (totals {totals}), {len(other)} other, last {events[-1] if events else None}")


# ---------------------------------------------------------------------------------------------
def section_basics(client, expect_model):
    s = "basics"
    guarded(s, "healthz")(lambda: check(s, "healthz", client.healthz() is True))

    def caps():
        c = client.capabilities()
        labels = sorted(str(x) for x in np.load(PREDICT / "bank.npz")["labels"])
        ok = (c.get("model") == expect_model and list(c.get("patch_size", [])) == CONFIG["patch_size"]
              and c.get("available_embeddings") == labels)
        check(s, "capabilities", ok, json.dumps(c, ensure_ascii=False))
    guarded(s, "capabilities")(caps)


def section_uploads(client, base_url, headers, tmp):
    """Returns {case: (image_id, props, ref_data)} of the .nii.gz uploads."""
    s = "(a) upload"
    out = {}
    for case, cc in CONFIG["cases"].items():
        gz_path = PREDICT / cc["file"]
        gz_bytes = gz_path.read_bytes()
        nii_path = Path(tmp) / f"{case}.nii"
        nii_path.write_bytes(gzip.decompress(gz_bytes))
        ref, props = read_ref(gz_path)
        ref_nii, props_nii = read_ref(nii_path)
        assert np.array_equal(ref, ref_nii) and props["spacing"] == props_nii["spacing"]
        for kind, body in ((".nii.gz", gz_bytes), (".nii", nii_path.read_bytes())):
            for include in (True, False):
                name = f"{case}{kind} include_image={include}"

                def one():
                    image_id, arr, spacing, shape = client.upload_image(body, include_image=include)
                    ok = len(image_id) == 32 and all(c in "0123456789abcdef" for c in image_id)
                    ok = ok and tuple(shape) == ref.shape and list(spacing) == list(props["spacing"])
                    detail = f"shape {tuple(shape)} spacing {tuple(spacing)}"
                    if include:
                        same = (arr is not None and arr.dtype == np.float32 and arr.shape == ref.shape
                                and np.array_equal(arr, ref))
                        if arr is not None and arr.shape == ref.shape and not same:
                            detail += f"; {int(np.sum(arr != ref))} voxels differ, max |d| {float(np.max(np.abs(arr - ref)))}"
                        ok = ok and same
                        detail += f"; array {arr.dtype if arr is not None else None} == reader: {same}"
                    else:
                        ok = ok and arr is None
                        detail += "; no array"
                    if kind == ".nii.gz" and include:
                        out[case] = (image_id, props, ref)
                    check(s, name, ok, detail)
                guarded(s, name)(one)

        def raw_meta():
            r = httpx.post(f"{base_url}/images", params={"include_image": "false"}, content=gz_bytes,
                           headers={**headers, "Content-Type": "application/octet-stream"}, timeout=600)
            meta = json.loads(r.headers["X-Meta"])
            want = json.dumps({"image_id": meta["image_id"], "spacing": list(props["spacing"]),
                               "shape": list(ref.shape)})
            ok = (r.status_code == 200 and r.headers["X-Meta"] == want and r.content == b""
                  and r.headers.get("content-type") == "application/octet-stream")
            check(s, f"{case} raw X-Meta text", ok, r.headers["X-Meta"] if ok else
                  f"got {r.headers['X-Meta']!r}, want {want!r}, content-type {r.headers.get('content-type')}")
        guarded(s, f"{case} raw X-Meta text")(raw_meta)
    return out


def combined_labelmap(masks):
    """As the widget's combined mode / save: value i+1 where mask i > 0, later prompts win."""
    combined = np.zeros(masks.shape[1:], dtype=np.uint16)
    for i, m in enumerate(masks):
        combined[m > 0] = i + 1
    return combined


HEADER_FIELDS_IGNORED = set()


def compare_nifti(section, name, got_path, want_path, want_is_local):
    """Decoded comparison of two .nii.gz files: data, dtype, affine, codes, other header fields."""
    g = nib.load(str(got_path))
    w = nib.load(str(want_path))
    gd = np.asanyarray(g.dataobj)
    wd = np.asanyarray(w.dataobj)
    detail = []
    ok = True
    if gd.shape != wd.shape:
        return check(section, name, False, f"shape {gd.shape} vs {wd.shape}")
    ndiff = int(np.sum(gd != wd))
    detail.append(f"data: {ndiff} voxels differ")
    if want_is_local:
        ok = ok and ndiff == 0
    same_dtype = g.get_data_dtype() == w.get_data_dtype()
    detail.append(f"dtype {g.get_data_dtype()} vs {w.get_data_dtype()}")
    ok = ok and same_dtype
    aff_equal = np.array_equal(g.affine, w.affine)
    aff_close = np.allclose(g.affine, w.affine, atol=1e-5)
    detail.append(f"affine {'identical' if aff_equal else ('close' if aff_close else 'DIFFERENT')}"
                  + ("" if aff_equal else f" (max |d| {np.max(np.abs(g.affine - w.affine)):.3g})"))
    ok = ok and aff_close
    gs, gq = int(g.header["sform_code"]), int(g.header["qform_code"])
    ws, wq = int(w.header["sform_code"]), int(w.header["qform_code"])
    detail.append(f"sform/qform {gs}/{gq} vs {ws}/{wq}")
    ok = ok and (gs, gq) == (ws, wq)
    # Every other header field, reported (a difference here is a note, not a failure).
    diffs = []
    for key in g.header.keys():
        a, b = np.asarray(g.header[key]), np.asarray(w.header[key])
        if a.shape != b.shape or not np.array_equal(a, b, equal_nan=a.dtype.kind == "f"):
            diffs.append(f"{key}: {a.tolist()} vs {b.tolist()}")
    if diffs:
        NOTES.append(f"{section} {name}: header fields differ: " + "; ".join(diffs))
        detail.append(f"{len(diffs)} other header field(s) differ (see notes)")
    else:
        detail.append("all other header fields equal")
    return check(section, name, ok, ", ".join(detail))


def section_jobs(client, uploads, tmp):
    masks_by_case = {}
    for case, cc in CONFIG["cases"].items():
        if case not in uploads:
            check("(b) masks", f"{case}", False, "no upload to run on")
            continue
        image_id, props, ref = uploads[case]
        prompts = cc["prompts"]

        def job():
            job_id, events = run_job(client, image_id, prompts, f"{case} {prompts}")
            check_events(f"(b) {case}", events, len(prompts))
            masks = client.get_result(job_id)
            ok = masks.dtype == np.uint8 and masks.shape == (len(prompts), *ref.shape) and set(
                np.unique(masks).tolist()) <= {0, 1}
            check(f"(b) {case}", "result dtype/shape/values", ok,
                  f"{masks.dtype} {masks.shape} values {np.unique(masks).tolist()}")
            for i, (p, official) in enumerate(zip(prompts, cc["official_outputs"])):
                want = read_ref(PREDICT / official)[0].astype(np.uint8)
                n = int(np.sum(masks[i] != want))
                # Tolerance: a few voxels whose official f16 logit is ~0 (docs: f16 accumulation).
                tol = 10
                ok = masks[i].shape == want.shape and n <= tol
                check(f"(b) {case}", f"mask {p!r} vs {official}", ok,
                      f"{n} of {want.size} voxels differ ({int(want.sum())} official foreground)"
                      + ("" if n == 0 else f" [tolerance {tol}]"))
                if n:
                    NOTES.append(f"(b) {case} {p!r}: {n} voxel(s) differ from the official mask at "
                                 f"{np.argwhere(masks[i] != want)[:5].tolist()} (Z,Y,X)")
            return job_id, masks
        res = guarded(f"(b) {case}", "job")(job)
        if res is None:
            continue
        job_id, masks = res
        masks_by_case[case] = masks

        # Contract extras on the finished job: replay, cancel of a finished job.
        def replay():
            again = list(client.stream_events(job_id))
            check(f"(b) {case}", "events reopened after the end", again == [{"status": "done"}], json.dumps(again))
        guarded(f"(b) {case}", "events reopened after the end")(replay)

        # (c) export
        def export():
            combined = combined_labelmap(masks)
            got = client.export(image_id, combined)
            got_path = Path(tmp) / f"{case}_export_server.nii.gz"
            got_path.write_bytes(got)
            local_path = Path(tmp) / f"{case}_export_local.nii.gz"
            NibabelIOWithReorient().write_seg(combined, str(local_path), props)
            compare_nifti("(c) export", f"{case} vs local write_seg", got_path, local_path, True)
            compare_nifti("(c) export", f"{case} vs official_combined (informative data diff)", got_path,
                          PREDICT / cc["official_combined"], False)
            # A label >= 255 makes write_seg store uint16.
            big = combined.copy()
            big[big == 1] = 300
            got = client.export(image_id, big)
            (Path(tmp) / "big_server.nii.gz").write_bytes(got)
            NibabelIOWithReorient().write_seg(big, str(Path(tmp) / "big_local.nii.gz"), props)
            compare_nifti("(c) export", f"{case} label 300 (uint16) vs local write_seg",
                          Path(tmp) / "big_server.nii.gz", Path(tmp) / "big_local.nii.gz", True)
        guarded("(c) export", f"{case}")(export)

    # A single string as prompts.
    if "mr_small" in uploads and "mr_small" in masks_by_case:
        image_id, props, ref = uploads["mr_small"]

        def single():
            prompt = CONFIG["cases"]["mr_small"]["prompts"][1]
            job_id, events = run_job(client, image_id, prompt, f"mr_small single string {prompt!r}")
            check_events("(b) single string", events, 1)
            masks = client.get_result(job_id)
            same = masks.shape == (1, *ref.shape) and np.array_equal(masks[0], masks_by_case["mr_small"][1])
            check("(b) single string", f"prompts={prompt!r} -> (1,Z,Y,X), equals the list job's mask", same,
                  f"{masks.dtype} {masks.shape}")
        guarded("(b) single string", "job")(single)
    return masks_by_case


def synthetic_volume(path, n=128, seed=0):
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:n, :n, :n].astype(np.float32) / n - 0.5
    body = (x / 0.45) ** 2 + (y / 0.35) ** 2 + (z / 0.48) ** 2 < 1
    organ = ((x - 0.1) / 0.15) ** 2 + ((y + 0.05) / 0.12) ** 2 + (z / 0.2) ** 2 < 1
    vol = np.where(body, 40.0, -1000.0) + np.where(organ, 60.0, 0.0) + rng.normal(0, 20, body.shape)
    img = nib.Nifti1Image(vol.astype(np.int16), np.diag([1.0, 1.0, 1.5, 1.0]))
    nib.save(img, str(path))


def section_cancel(client, tmp):
    s = "cancel"
    path = Path(tmp) / "synthetic_128.nii.gz"
    synthetic_volume(path)

    def go():
        image_id, _, _, shape = client.upload_image(path.read_bytes(), include_image=False)
        prompts = ["liver", "left kidney", "lesion (liver)/segment 4", "läsion der leber"]
        t0 = time.monotonic()
        job_id = client.start_job(image_id, prompts)
        events = []
        cancelled_at = None
        for ev in client.stream_events(job_id):
            events.append(ev)
            if cancelled_at is None and "done" in ev:
                client.cancel(job_id)
                cancelled_at = time.monotonic() - t0
        wall = time.monotonic() - t0
        print(f"  job on {shape} with 4 prompts, cancel after the first progress line ({cancelled_at:.2f} s): "
              f"{len(events)} lines, terminal after {wall:.2f} s")
        print_events(events, limit=4)
        progress = [e for e in events if "done" in e]
        ok = events[-1] == {"status": "cancelled"} and progress and progress[-1]["done"] < progress[-1]["total"]
        check(s, "cancel lands mid-job", ok,
              f"last progress {progress[-1] if progress else None}, terminal {events[-1]}, "
              f"{wall - (cancelled_at or 0):.2f} s from cancel to terminal")
        try:
            client.get_result(job_id)
            check(s, "result of a cancelled job", False, "got 200")
        except httpx.HTTPStatusError as e:
            body = e.response.json()
            check(s, "result of a cancelled job", e.response.status_code == 409
                  and body == {"detail": "Job not finished (status=cancelled)."},
                  f"{e.response.status_code} {body}")
        again = list(client.stream_events(job_id))
        check(s, "events reopened after cancel", again == [{"status": "cancelled"}], json.dumps(again))
        r = client._client.post(f"/jobs/{job_id}/cancel")
        check(s, "cancel of a finished job", r.status_code == 200 and r.json() == {"cancelling": True},
              f"{r.status_code} {r.text}")
    guarded(s, "cancel")(go)
    path.unlink(missing_ok=True)


def section_dicom(client, base_url, headers, tmp, names=("ct_axial", "mr_oblique")):
    s = "DICOM zip"
    manifest = {c["name"]: c for c in json.loads((DICOM / "manifest.json").read_text())["cases"]}
    for name in names:
        def one():
            case = manifest[name]
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
                for f in sorted((DICOM / case["folder"]).rglob("*")):
                    if f.is_file():
                        zf.write(f, f"{name}/{f.relative_to(DICOM / case['folder'])}")
            body = buf.getvalue()
            r = httpx.post(f"{base_url}/images", params={"include_image": "true"}, content=body,
                           headers={**headers, "Content-Type": "application/octet-stream"}, timeout=600)
            if r.status_code != 200:
                return check(s, name, False, f"POST /images: {r.status_code} {r.text[:300]}")
            meta = json.loads(r.headers["X-Meta"])
            arr = unpack_array(r.content)
            # Reference: SimpleITK's volume (committed) as NIfTI, through the nnU-Net reader.
            expected = np.load(DICOM / case["expected"])
            affine = np.load(DICOM / case["affine"])
            ref_path = Path(tmp) / f"{name}_ref.nii.gz"
            nib.save(nib.Nifti1Image(expected, affine), str(ref_path))
            ref, props = read_ref(ref_path)
            ok_shape = tuple(meta["shape"]) == ref.shape == arr.shape
            spacing_close = np.allclose(meta["spacing"], props["spacing"], rtol=1e-6)
            same = ok_shape and np.array_equal(arr, ref)
            detail = (f"{len(body)} B zip of {case['num_files']} files; shape {tuple(meta['shape'])} "
                      f"(reference {ref.shape}); spacing {meta['spacing']} (reference {props['spacing']}); "
                      f"voxels equal: {same}")
            if ok_shape and not same:
                detail += f" ({int(np.sum(arr != ref))} differ, max |d| {float(np.max(np.abs(arr - ref)))})"
            if meta["spacing"] != list(props["spacing"]):
                NOTES.append(f"DICOM {name}: spacing {meta['spacing']} vs reader-of-the-SimpleITK-NIfTI "
                             f"{props['spacing']} (the NIfTI reference stores float32 zooms)")
            check(s, f"{name} upload vs SimpleITK reference", ok_shape and spacing_close and same, detail)
            job_id, events = run_job(client, meta["image_id"], ["liver"], f"DICOM {name}")
            masks = client.get_result(job_id)
            check(s, f"{name} job", events[-1] == {"status": "done"} and masks.shape == (1, *ref.shape),
                  f"terminal {events[-1]}, masks {masks.dtype} {masks.shape}, {int(masks.sum())} foreground")
        guarded(s, name)(one)


def largest_component(mask):
    """The official keep_largest (voxtell/server/runner.py): scipy.ndimage.label with the default
    structure (6-connectivity), keep the largest component (ties: the lowest label)."""
    from scipy import ndimage
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    return (labels == int(np.argmax(sizes)) + 1).astype(mask.dtype)


def section_extras(client, base_url, headers, uploads, masks_by_case, tmp):
    s = "extras"
    if "mr_small" in uploads and "mr_small" in masks_by_case:
        image_id, _, ref = uploads["mr_small"]
        plain = masks_by_case["mr_small"]
        prompts = CONFIG["cases"]["mr_small"]["prompts"]

        def keep():
            job_id = client.start_job(image_id, prompts, keep_largest=True)
            events = list(client.stream_events(job_id))
            got = client.get_result(job_id)
            diffs = [int(np.sum(got[i] != largest_component(plain[i]))) for i in range(len(prompts))]
            comps = []
            from scipy import ndimage
            for i in range(len(prompts)):
                comps.append(ndimage.label(plain[i])[1])
            check(s, "keep_largest=true vs scipy.ndimage.label (6-conn) on the plain masks",
                  events[-1] == {"status": "done"} and diffs == [0] * len(prompts),
                  f"differing voxels per prompt {diffs}; components before {comps}")
        guarded(s, "keep_largest")(keep)

        def dup():
            job_id = client.start_job(image_id, ["liver", "Liver", "LIVER", "left kidney"])
            events = list(client.stream_events(job_id))
            got = client.get_result(job_id)
            ok = (events[-1] == {"status": "done"} and got.shape[0] == 4
                  and all(np.array_equal(got[i], plain[0]) for i in range(3)) and np.array_equal(got[3], plain[1]))
            check(s, "repeated / differently-cased prompts -> one mask each, in order", ok, f"{got.shape}")
        guarded(s, "duplicates")(dup)

    def queue_and_streams():
        path = Path(tmp) / "synthetic_96.nii.gz"
        synthetic_volume(path, n=96, seed=1)
        big_id, _, _, _ = client.upload_image(path.read_bytes(), include_image=False)
        path.unlink()
        small_id = uploads["mr_small"][0]
        job_a = client.start_job(big_id, ["liver", "left kidney"])
        job_b = client.start_job(small_id, ["liver"])
        # Two concurrent streams of job A, and job B's stream while A runs.
        import threading
        seen = {}

        def reader(key, job, n=None):
            c = VoxTellRemoteClient(base_url)
            out = []
            for ev in c.stream_events(job):
                out.append(ev)
                if n and len(out) >= n:
                    break
            seen[key] = out
            c.close()
        ta = threading.Thread(target=reader, args=("a1", job_a, 5))
        tb = threading.Thread(target=reader, args=("a2", job_a, 5))
        tq = threading.Thread(target=reader, args=("b", job_b, 1))
        for t in (ta, tb, tq):
            t.start()
        tq.join(30)
        first_b = seen.get("b", [None])[0]
        check(s, "a job waiting for another says so (ignored by the widget)",
              isinstance(first_b, dict) and first_b.get("event") == "queued" and "status" not in first_b
              and "done" not in first_b, f"first line of job B: {first_b}")
        client.cancel(job_b)
        events_b = list(client.stream_events(job_b))
        check(s, "cancel of a queued job ends it at once", events_b[-1] == {"status": "cancelled"},
              json.dumps(events_b))
        ta.join(60)
        tb.join(60)
        a1, a2 = seen.get("a1", []), seen.get("a2", [])
        # Official: events are split between concurrent streams (each delivered once); ours: every
        # stream sees every line from the moment it opens. Either satisfies the widget.
        check(s, "two concurrent streams of one job both progress", len(a1) == 5 and len(a2) == 5,
              f"stream 1 {[e.get('done') for e in a1]}, stream 2 {[e.get('done') for e in a2]}")
        client.cancel(job_a)
        events_a = list(client.stream_events(job_a))
        check(s, "cancel of the running job", events_a[-1] == {"status": "cancelled"}, json.dumps(events_a[-2:]))
    if "mr_small" in uploads:
        guarded(s, "queue and streams")(queue_and_streams)

    def four_d():
        img = nib.Nifti1Image(np.zeros((4, 5, 6, 2), np.int16), np.eye(4))
        buf = io.BytesIO()
        buf.write(img.to_bytes())
        r = httpx.post(f"{base_url}/images", content=gzip.compress(buf.getvalue()), headers=headers)
        check(s, "4-D upload -> 400 JSON (official: 500)", r.status_code == 400, f"{r.status_code} {r.text[:160]}")
    guarded(s, "4-D upload")(four_d)

    def no_content_type():
        r = httpx.post(f"{base_url}/jobs", content=json.dumps({"image_id": "x", "prompts": ["liver"]}),
                       headers={**headers, "Content-Type": "text/plain"})
        # FastAPI's `payload: dict` body answers 422 without Content-Type: application/json; the
        # widget always sends it (httpx json=), so this is informative only.
        NOTES.append(f"POST /jobs with Content-Type text/plain: {r.status_code} {r.text[:120]} "
                     f"(official: 422)")
    guarded(s, "content type")(no_content_type)


def section_errors(client, base_url, headers, uploads):
    s = "status codes"
    c = httpx.Client(base_url=base_url, headers=headers, timeout=60)
    image_id = next(iter(uploads.values()))[0] if uploads else "0" * 32
    cases = [
        ("POST /jobs unknown image_id", lambda: c.post("/jobs", json={"image_id": "nope", "prompts": ["liver"]}),
         404, {"detail": "Unknown image_id (upload it first)."}),
        ("POST /jobs prompts []", lambda: c.post("/jobs", json={"image_id": image_id, "prompts": []}),
         400, {"detail": "No prompts given."}),
        ("POST /jobs prompts [' ']", lambda: c.post("/jobs", json={"image_id": image_id, "prompts": [" "]}),
         400, {"detail": "prompts must be a list of non-empty strings."}),
        ("POST /jobs prompts 5", lambda: c.post("/jobs", json={"image_id": image_id, "prompts": 5}),
         400, {"detail": "prompts must be a list of non-empty strings."}),
        ("POST /jobs not JSON", lambda: c.post("/jobs", content=b"{", headers={"Content-Type": "application/json"}),
         422, None),
        ("GET /jobs/x/events", lambda: c.get("/jobs/x/events"), 404, {"detail": "Unknown job_id."}),
        ("GET /jobs/x/result", lambda: c.get("/jobs/x/result"), 404, {"detail": "Unknown job_id."}),
        ("POST /jobs/x/cancel", lambda: c.post("/jobs/x/cancel"), 404, {"detail": "Unknown job_id."}),
        ("POST /images/x/export", lambda: c.post("/images/x/export", content=b"VXA2"), 404,
         {"detail": "Unknown image_id."}),
        ("POST /images?include_image=maybe", lambda: c.post("/images", params={"include_image": "maybe"},
                                                            content=b"x"), 422, None),
        ("GET /nowhere", lambda: c.get("/nowhere"), 404, {"detail": "Not Found"}),
        ("GET /jobs (method)", lambda: c.get("/jobs"), 405, {"detail": "Method Not Allowed"}),
    ]
    for name, fn, code, body in cases:
        def one():
            r = fn()
            try:
                got = r.json()
            except ValueError:
                got = r.text
            ok = r.status_code == code and (body is None or got == body)
            check(s, name, ok, f"{r.status_code} {json.dumps(got, ensure_ascii=False)[:160]}")
        guarded(s, name)(one)
    # Improvements over the official server (docs/server-api.md §2.12): 400 instead of 500.
    improvements = [
        ("POST /images empty body", lambda: c.post("/images", content=b"")),
        ("POST /images garbage", lambda: c.post("/images", content=b"not a nifti at all" * 30)),
        ("POST /images/{id}/export wrong shape",
         lambda: c.post(f"/images/{image_id}/export", content=pack_array(np.zeros((2, 3, 4), np.uint16)))),
        ("POST /images/{id}/export bad payload", lambda: c.post(f"/images/{image_id}/export", content=b"VXA2junk")),
    ]
    for name, fn in improvements:
        def one():
            r = fn()
            ok = r.status_code == 400 and isinstance(r.json().get("detail"), str)
            check(s, name + " (400, not the official 500)", ok, f"{r.status_code} {r.text[:160]}")
        guarded(s, name)(one)
    # The connection stays usable after an error (the official server resets it).
    guarded(s, "keep-alive after errors")(lambda: check(s, "keep-alive after errors",
                                                        c.get("/healthz").status_code == 200))
    c.close()


def section_auth(binary, tmp):
    s = "API key"
    key = "s3cret-Key_42"
    key_file = Path(tmp) / "key.txt"
    key_file.write_text(key + "\n")
    srv = serve_common.start_voxtell(["--api-key-file", key_file], binary=binary,
                                     log_path=Path(tmp) / "server-key.log")
    print(f"  server with a key: pid {srv.pid}, {srv.url}")
    try:
        nokey = VoxTellRemoteClient(srv.url)
        check(s, "healthz without a key", nokey.healthz() is True)
        for label, client in (("no key", nokey), ("wrong key", VoxTellRemoteClient(srv.url, api_key="nope"))):
            try:
                client.capabilities()
                check(s, f"capabilities with {label}", False, "got 200")
            except httpx.HTTPStatusError as e:
                check(s, f"capabilities with {label}", e.response.status_code == 401
                      and e.response.json() == {"detail": "Invalid or missing API key."},
                      f"{e.response.status_code} {e.response.text}")
            client.close()
        r = httpx.get(f"{srv.url}/capabilities", headers={"Authorization": f"bearer {key}"})
        check(s, "lower-case 'bearer' scheme", r.status_code == 401, f"{r.status_code}")
        r = httpx.post(f"{srv.url}/jobs", json={"image_id": "x", "prompts": ["liver"]})
        check(s, "POST /jobs without a key", r.status_code == 401, f"{r.status_code} {r.text}")
        client = VoxTellRemoteClient(srv.url, api_key=key)
        caps = client.capabilities()
        check(s, "capabilities with the key", caps.get("model") == "cfg_a", json.dumps(caps, ensure_ascii=False))
        gz = (PREDICT / "images/mr_small.nii.gz").read_bytes()
        image_id, _, _, shape = client.upload_image(gz, include_image=False)
        job_id, events = run_job(client, image_id, ["liver"], "with the key")
        masks = client.get_result(job_id)
        out = client.export(image_id, combined_labelmap(masks))
        check(s, "upload, job, result, export with the key", events[-1] == {"status": "done"}
              and masks.shape == (1, *shape) and out[:2] == b"\x1f\x8b",
              f"masks {masks.shape}, export {len(out)} B")
        client.close()
    finally:
        rc = srv.stop()
        check(s, "server stopped (SIGTERM by pid)", rc == 0, f"exit code {rc}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary", help="voxtell binary (default: target/debug/voxtell, else release)")
    args = ap.parse_args()
    binary = Path(args.binary) if args.binary else serve_common.voxtell_binary()
    t_start = time.monotonic()
    loaded = sorted(m for m in ("napari", "qtpy", "torch", "SimpleITK") if m in sys.modules
                    and getattr(sys.modules[m], "__file__", None))
    print(f"client: napari_voxtell.remote from {sys.modules['napari_voxtell'].__path__[0]}; "
          f"real napari/qtpy/torch/SimpleITK imported: {loaded or 'none'}")
    print(f"server binary: {binary.relative_to(ROOT) if binary.is_relative_to(ROOT) else binary}")
    check("setup", "client imported without napari, qtpy, torch", not loaded, str(loaded or "none"))

    with tempfile.TemporaryDirectory(prefix="serve-napari-check-") as tmp:
        srv = serve_common.start_voxtell(binary=binary, log_path=Path(tmp) / "server.log")
        print(f"server: pid {srv.pid}, {srv.url}, ready in {srv.started:.1f} s")
        try:
            client = VoxTellRemoteClient(srv.url)
            print("\n== basics")
            section_basics(client, "cfg_a")
            print("\n== (a) uploads")
            uploads = section_uploads(client, srv.url, {}, tmp)
            print("\n== (b) jobs, (c) export")
            masks_by_case = section_jobs(client, uploads, tmp)
            print("\n== cancel")
            section_cancel(client, tmp)
            print("\n== extras")
            section_extras(client, srv.url, {}, uploads, masks_by_case, tmp)
            print("\n== DICOM zip")
            section_dicom(client, srv.url, {}, tmp)
            print("\n== status codes")
            section_errors(client, srv.url, {}, uploads)
            client.close()
            check("server", "alive after all requests", srv.alive())
        finally:
            rss = srv.status()
            rc = srv.stop()
            check("server", "stopped (SIGTERM by pid)", rc == 0,
                  f"exit code {rc}; VmHWM {rss.get('VmHWM', 0) / 1024:.0f} MiB")
            panics = [line for line in srv.lines if "panick" in line.lower()]
            check("server", "no panic in its log", not panics, "; ".join(panics[:3]))
        print("\n== API key")
        section_auth(binary, tmp)

    print("\n" + table([(sec, name, "PASS" if ok else "FAIL", detail) for sec, name, ok, detail in RESULTS],
                       ["section", "check", "result", "detail"]))
    if NOTES:
        print("\nNotes:")
        for n in NOTES:
            print("-", n)
    failed = sum(not ok for _, _, ok, _ in RESULTS)
    print(f"\n{len(RESULTS) - failed} passed, {failed} failed, {time.monotonic() - t_start:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
