#!/usr/bin/env python3
"""`voxtell serve` against the official `voxtell-server` (PyPI voxtell 0.1.2) on the same machine,
with the same client (httpx + the official VXA2 (de)serializer), one server at a time.
Run through tools/serve_bench_vs_official.sh (venv, release build, benchmark cases). Manual
tool: CI never runs it.

    tools/.venv-official/bin/python tools/serve_bench_vs_official.py bench
        [--skip-a] [--skip-b] [--a-prompts 1] [--repeats 3] [--job-limit 1800]

(a) target/bench-vs-official/small-512 (bench_official.py make --small --shape 512,512,300: a
    512x512x300 int16 CT and the small random model, patch 64^3): POST /images?include_image=true
    of ct.nii.gz, timed until the whole answer is read (--repeats times, median), plus the
    client's decoding of the answer; then a job of --a-prompts prompt(s) on that scan and the
    timed GET /jobs/{id}/result (+ decoding). The job's wall time is reported too.
(b) target/bench-vs-official/full (bench_official.py make: the published sizes, random weights,
    ~1.8 GB checkpoint; a 192^3 CT = one tile): a 4-prompt job, wall time from POST /jobs to
    the terminal event line, and the server's peak RSS (VmHWM over its whole life, and the peak
    from the job's start: VmHWM reset through /proc/PID/clear_refs after the upload).

The official server runs `voxtell-server --device cpu -m MODEL --embeddings BANK --port P`
(for the small model through `official-server`, which applies bench_official.small_model_patches
so that the official code builds the small model; nothing else changes). Ours:
`target/release/voxtell serve -m MODEL --embeddings BANK --port 0 --device cpu`.
Both use the 2 cores (torch's default; ours' default). Ratios are ours / official.
"""
import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve_common  # noqa: E402
from serve_common import ROOT, table  # noqa: E402

CASE_A = ROOT / "target/bench-vs-official/small-512"
CASE_B = ROOT / "target/bench-vs-official/full"
VENV_BIN = Path(sys.executable).parent


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(which, case, small, log):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.pop("VOXTELL_MODEL", None)
    env.pop("VOXTELL_API_KEY", None)
    if which == "ours":
        argv = [ROOT / "target/release/voxtell", "serve", "-m", case, "--embeddings", case / "bank.npz",
                "--port", "0", "--device", "cpu"]
        return serve_common.ServerProcess(argv, r"Serving on http://", log_path=log, env=env)
    port = free_port()
    args = ["--device", "cpu", "-m", str(case), "--embeddings", str(case / "bank.npz"), "--port", str(port)]
    if small:
        argv = [sys.executable, Path(__file__).resolve(), "official-server", *args]
    else:
        argv = [VENV_BIN / "voxtell-server", *args]
    return serve_common.ServerProcess(argv, r"Uvicorn running on http://", log_path=log, env=env)


def events(client, job):
    with client.stream("GET", f"/jobs/{job}/events", timeout=None) as resp:
        resp.raise_for_status()
        out = []
        for line in resp.iter_lines():
            if line.strip():
                out.append(json.loads(line))
        return out


def timed_repeats(n, decode, request, line):
    """`request()` `n` times (n >= 1), each answer checked and its body decoded (`decode`), with a
    line per try (`line(i, request seconds, response, decode seconds)`). Returns the median request
    and decode seconds, the last response and the last decoded body."""
    times, decode_times = [], []
    for i in range(n):
        t0 = time.perf_counter()
        resp = request()
        t1 = time.perf_counter()
        resp.raise_for_status()
        body = decode(resp.content)
        t2 = time.perf_counter()
        times.append(t1 - t0)
        decode_times.append(t2 - t1)
        print(line(i, t1 - t0, resp, t2 - t1), flush=True)
    return statistics.median(times), statistics.median(decode_times), resp, body


def bench_a(which, args, results):
    import httpx
    import numpy as np
    from voxtell.server.serialization import unpack_array

    body = (CASE_A / "ct.nii.gz").read_bytes()
    srv = start(which, CASE_A, True, ROOT / f"target/bench-vs-official/serve-{which}-a.log")
    print(f"  {which}: pid {srv.pid}, {srv.url}, ready in {srv.started:.1f} s", flush=True)
    r = {}
    try:
        c = httpx.Client(base_url=srv.url, timeout=httpx.Timeout(3600, connect=10))
        r["upload_s"], r["upload_decode_s"], resp, arr = timed_repeats(
            args.repeats, unpack_array,
            lambda: c.post("/images", params={"include_image": "true"}, content=body,
                           headers={"Content-Type": "application/octet-stream"}),
            lambda i, s, resp, d: f"    upload {i + 1}: {s:.2f} s, answer {len(resp.content) / 2**20:.1f} MiB, "
                                  f"decode {d:.2f} s, RSS {srv.rss_kib() / 1024:.0f} MiB")
        meta = json.loads(resp.headers["X-Meta"])
        r["answer_mib"] = len(resp.content) / 2**20
        r["meta"] = {k: v for k, v in meta.items() if k != "image_id"}
        r["image"] = arr
        prompts = [f"prompt {i}" for i in range(args.a_prompts)]
        t0 = time.perf_counter()
        job = c.post("/jobs", json={"image_id": meta["image_id"], "prompts": prompts}).json()["job_id"]
        ev = []
        deadline = time.monotonic() + args.job_limit
        with c.stream("GET", f"/jobs/{job}/events", timeout=None) as resp:
            for line in resp.iter_lines():
                if line.strip():
                    ev.append(json.loads(line))
                    if "status" in ev[-1]:
                        break
                    if time.monotonic() > deadline:
                        c.post(f"/jobs/{job}/cancel")
        r["job_s"] = time.perf_counter() - t0
        r["job_status"] = ev[-1]
        tiles = [e for e in ev if "done" in e]
        print(f"    job of {len(prompts)} prompt(s): {ev[-1]} after {r['job_s']:.1f} s "
              f"({len(tiles)} progress lines, total {tiles[-1]['total'] if tiles else '?'})", flush=True)
        if ev[-1] == {"status": "done"}:
            r["result_s"], r["result_decode_s"], resp, masks = timed_repeats(
                args.repeats, unpack_array, lambda: c.get(f"/jobs/{job}/result"),
                lambda i, s, resp, d: f"    result {i + 1}: {s:.2f} s, {len(resp.content) / 2**20:.2f} MiB, "
                                      f"decode {d:.2f} s")
            r["result_mib"] = len(resp.content) / 2**20
            r["masks"] = masks
            r["fg"] = int(np.count_nonzero(masks))
        r["hwm_mib"] = srv.hwm_kib() / 1024
        c.close()
    finally:
        rc = srv.stop()
        print(f"    stopped, exit code {rc}", flush=True)
    results[which] = r


def bench_b(which, args, results):
    import httpx
    import numpy as np
    from voxtell.server.serialization import unpack_array

    srv = start(which, CASE_B, False, ROOT / f"target/bench-vs-official/serve-{which}-b.log")
    print(f"  {which}: pid {srv.pid}, {srv.url}, ready in {srv.started:.1f} s, "
          f"RSS {srv.rss_kib() / 1024:.0f} MiB", flush=True)
    r = {"ready_s": srv.started}
    try:
        c = httpx.Client(base_url=srv.url, timeout=httpx.Timeout(7200, connect=10))
        resp = c.post("/images", params={"include_image": "false"}, content=(CASE_B / "ct.nii.gz").read_bytes())
        resp.raise_for_status()
        image_id = json.loads(resp.headers["X-Meta"])["image_id"]
        r["hwm_before_mib"] = srv.hwm_kib() / 1024
        r["rss_before_mib"] = srv.rss_kib() / 1024
        reset = srv.reset_hwm()
        prompts = [f"prompt {i}" for i in range(4)]
        t0 = time.perf_counter()
        job = c.post("/jobs", json={"image_id": image_id, "prompts": prompts}).json()["job_id"]
        ev = events(c, job)
        r["job_s"] = time.perf_counter() - t0
        r["job_status"] = ev[-1]
        after = srv.hwm_kib() / 1024
        # After a reset VmHWM counts from the job's start; the whole life's peak is the larger.
        r["hwm_mib"] = max(after, r["hwm_before_mib"]) if reset else after
        r["hwm_job_mib"] = after if reset else None
        print(f"    4-prompt job: {ev[-1]} after {r['job_s']:.1f} s; events "
              f"{[e for e in ev if 'status' not in e][:6]}; VmHWM {after:.0f} MiB "
              f"({'since the job started' if reset else 'whole life: clear_refs refused'}), "
              f"before the job {r['hwm_before_mib']:.0f} MiB; RSS after the job {srv.rss_kib() / 1024:.0f} MiB",
              flush=True)
        if ev[-1] == {"status": "done"}:
            r["masks"] = unpack_array(c.get(f"/jobs/{job}/result").content)
            r["fg"] = [int(np.count_nonzero(m)) for m in r["masks"]]
        c.close()
    finally:
        rc = srv.stop()
        print(f"    stopped, exit code {rc}", flush=True)
    if not reset:
        r["hwm_job_mib"] = None
    results[which] = r


def ratio(a, b):
    return f"{a / b:.3f}" if a is not None and b else "-"


def compare(tag, title, bench, args, measures, digits):
    """Run benchmark `tag` ("(a)" with bench_a, "(b)" with bench_b) for our server, then the
    official one, and print a table of `measures` ((label, result key) pairs): official, ours
    (`digits` decimals; - where a result lacks the key) and ours/official. Returns the
    (official, ours) results."""
    print(f"\n{tag} {title}")
    results = {}
    for which in ("ours", "official"):
        bench(which, args, results)
    o, u = results["official"], results["ours"]

    def fmt(v):
        return f"{v:.{digits}f}" if v is not None else "-"

    rows = [(label, fmt(o.get(key)), fmt(u.get(key)), ratio(u.get(key), o.get(key))) for label, key in measures]
    print()
    print(table(rows, [f"{tag} measure", "official", "ours", "ours/official"]))
    return o, u


def cmd_bench(args):
    import numpy as np

    print(f"CPU: {serve_common.cpu_model()}; load average {' '.join(open('/proc/loadavg').read().split()[:3])}")
    if not args.skip_a:
        o, u = compare("(a)", "512x512x300 int16 CT: upload with include_image=true, job, result download", bench_a, args, [
            ("upload + answer (include_image=true), s", "upload_s"),
            ("  client decode of the answer, s", "upload_decode_s"),
            ("  answer size, MiB", "answer_mib"),
            (f"job ({args.a_prompts} prompt(s), small model), s", "job_s"),
            ("result download, s", "result_s"),
            ("  client decode of the result, s", "result_decode_s"),
            ("  result size, MiB", "result_mib"),
            ("server VmHWM (whole life), MiB", "hwm_mib"),
        ], 3)
        same_img = np.array_equal(o["image"], u["image"])
        print(f"answers: X-Meta official {o['meta']} / ours {u['meta']}; images identical: {same_img}")
        if "masks" in o and "masks" in u:
            agree = float((o["masks"] == u["masks"]).mean()) * 100
            print(f"results: foreground official {o['fg']}, ours {u['fg']}; {agree:.4f} % of voxels agree")
    if not args.skip_b:
        o, u = compare("(b)", "192^3 CT (one tile), full-size random model, 4 prompts", bench_b, args, [
            ("server start (model load) until it listens, s", "ready_s"),
            ("POST /jobs -> terminal event, s", "job_s"),
            ("peak RSS (VmHWM, whole life), MiB", "hwm_mib"),
            ("peak RSS from the job's start, MiB", "hwm_job_mib"),
            ("RSS before the job (model loaded, scan cached), MiB", "rss_before_mib"),
            ("peak RSS until the job (model load, upload), MiB", "hwm_before_mib"),
        ], 1)
        if "masks" in o and "masks" in u:
            agree = [float((a == b).mean()) * 100 for a, b in zip(o["masks"], u["masks"])]
            print(f"masks: foreground official {o['fg']}, ours {u['fg']}; agreement per prompt "
                  f"{', '.join(f'{a:.4f} %' for a in agree)}")
    return 0


def cmd_official_server(rest):
    """The official voxtell-server main(), with the small model's sizes patched in."""
    import bench_official
    case = Path(rest[rest.index("-m") + 1])
    cfg = json.loads((case / "bench_config.json").read_text())
    sys.argv = ["voxtell-server", *rest]
    from voxtell.server.__main__ import main
    with bench_official.small_model_patches(cfg["model"]):
        # The predictor is built inside main() (before uvicorn.run): the patches must be active
        # then; uvicorn.run blocks, so the block stays open while the server serves.
        return main()


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "official-server":
        return cmd_official_server(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bench")
    b.add_argument("--skip-a", action="store_true")
    b.add_argument("--skip-b", action="store_true")
    b.add_argument("--a-prompts", type=int, default=1)
    b.add_argument("--repeats", type=int, default=3, help="uploads and result downloads per server in (a)")
    b.add_argument("--job-limit", type=float, default=1800, help="cancel (a)'s job after this many seconds")
    args = ap.parse_args()
    return cmd_bench(args)


if __name__ == "__main__":
    sys.exit(main())
