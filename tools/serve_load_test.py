#!/usr/bin/env python3
"""Bounded load test of `voxtell serve`: mixed requests from 8 client threads while a long job
keeps the worker (and the CPU) busy. Manual tool: CI never runs it. Exits 1 on a missed target.

    tools/.venv-napari/bin/python tools/serve_load_test.py [--binary BIN] [--threads 8]
        [--requests 50] [--duration 90] [--cache-memory 32M] [--big 128] [--upload-size 64]

The venv is the one tools/serve_napari_check.sh makes (httpx, numpy, nibabel, blosc2, and the
napari-voxtell client's serialization module for decoding). Uses target/release/voxtell when
it exists, else target/debug/voxtell, with the tiny model fixtures/fusion/cfg_a.

Phases (the whole run is bounded: about 3 minutes at most, see --deadline):
1. Start the server (`--cache-memory` small on purpose, see below), upload the small image and
   a big synthetic volume (--big^3 int16, default 128: a 4-prompt job of ~20 s on this 2-core
   machine), run one 4-prompt job on the small image to the end:
   the "finished job" whose result and events are fetched under load. Then queue --bg-jobs
   4-prompt jobs on the big volume: they run one after the other for the whole test (queued
   jobs pin their image in the cache) and are cancelled at the end.
2. Warm-up rounds: every client thread makes --warmup mixed requests, repeated until the first
   background job has ended and at least --warmup-min s (default 60) have passed (at most
   --warmup-limit s): a job's end allocates its masks and result payload, a peak the load rounds
   would otherwise meet first, and the server's malloc arenas (one per thread that allocates,
   up to 8 per core; voxtell_alloc::tune_allocator turns glibc's automatic trimming off, and the
   server gives memory back only after each job) take about a minute of this load to reach
   their steady size (measured 2026-12-07: with a warm-up that
   ended at the first job's end, ~25 s, RSS rose 13-17 % within the next minute, then crept by
   about 1 MiB/min over a 6-minute run; with VOXTELL_SYSTEM_MALLOC=1 it rose 15 % and fell back
   after the jobs). Then the server's RSS
   (/proc/PID/status VmRSS, median of 10 samples over 2 s) is the warm-up figure.
3. Load rounds: every client thread makes --requests mixed requests; rounds repeat until
   --duration seconds (default 90) have passed. Meanwhile a separate thread calls GET /healthz
   at ~20 Hz on its own keep-alive connection and times each answer.
4. RSS at the end (same sampling, the background job still running), then cancel the jobs,
   stop the server by its pid.

The mix (weights): upload of the small NIfTI with include_image=true (2) and =false (2),
/healthz (1), /capabilities (1), the finished job's result (1, decoded and compared with the
first download), its event stream (1, must be exactly [{"status": "done"}]). Every answer is
checked (status, X-Meta shape, decoded arrays); any deviation or exception is an error.

Why a small --cache-memory and a 64^3 upload: each upload is cached (int16: 512 KiB for 64^3)
and evicted least-recently-used beyond --cache-memory. With a cache larger than what the test
uploads (e.g. 512M for ~300 uploads of a tiny image) RSS would grow by the cache's legitimate
filling between the warm-up and the end, and the +10 % check would measure that instead of a
leak. With 32M the warm-up round alone overfills the cache, so after it the cache is at its
steady state and RSS should stay flat.

Targets: 0 errors; RSS at the end <= warm-up RSS + 10 %; /healthz latency p99 <= 100 ms and
max <= 500 ms during the load rounds.
"""
import argparse
import gzip
import importlib.util
import json
import random
import statistics
import sys
import threading
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve_common  # noqa: E402
from serve_common import ROOT, table  # noqa: E402

import httpx  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402



def load_unpack():
    """unpack_array of napari-voxtell 0.2.0 (napari_voxtell/__init__.py is not run)."""
    spec = importlib.util.find_spec("napari_voxtell")
    if spec is None:
        sys.exit("napari-voxtell is not installed (run tools/serve_napari_check.sh first)")
    stub = types.ModuleType("napari_voxtell")
    stub.__path__ = list(spec.submodule_search_locations)
    sys.modules["napari_voxtell"] = stub
    from napari_voxtell.remote.serialization import unpack_array
    return unpack_array


unpack_array = load_unpack()


def synthetic(n, seed, path):
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:n, :n, :n].astype(np.float32) / n - 0.5
    body = (x / 0.45) ** 2 + (y / 0.35) ** 2 + (z / 0.48) ** 2 < 1
    organ = ((x - 0.1) / 0.15) ** 2 + ((y + 0.05) / 0.12) ** 2 + (z / 0.2) ** 2 < 1
    vol = np.where(body, 40.0, -1000.0) + np.where(organ, 60.0, 0.0) + rng.normal(0, 20, body.shape)
    nib.save(nib.Nifti1Image(vol.astype(np.int16), np.diag([0.9, 0.9, 1.2, 1.0])), str(path))
    return path.read_bytes()


def pct(values, q):
    if not values:
        return float("nan")
    v = sorted(values)
    k = min(len(v) - 1, max(0, int(round(q / 100 * (len(v) - 1)))))
    return v[k]


def rss_median(srv, samples=10, interval=0.2):
    vals = []
    for _ in range(samples):
        vals.append(srv.rss_kib())
        time.sleep(interval)
    return statistics.median(vals), min(vals), max(vals)


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.lat = {}      # kind -> [seconds]
        self.errors = []   # (kind, text)
        self.count = 0

    def ok(self, kind, dt):
        with self.lock:
            self.lat.setdefault(kind, []).append(dt)
            self.count += 1

    def error(self, kind, text):
        with self.lock:
            self.errors.append((kind, text))
            self.count += 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary")
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--requests", type=int, default=50, help="requests per thread in a load round")
    ap.add_argument("--duration", type=float, default=90.0,
                    help="repeat load rounds until this many seconds have passed (at least one round)")
    ap.add_argument("--warmup", type=int, default=25, help="requests per thread in the warm-up round")
    ap.add_argument("--cache-memory", default="32M")
    ap.add_argument("--warmup-min", type=float, default=60.0,
                    help="warm up at least this many seconds (the allocator's arenas reach their steady size "
                         "in about a minute of this load)")
    ap.add_argument("--warmup-limit", type=float, default=75.0,
                    help="end the warm-up after this many seconds even if no background job ended")
    ap.add_argument("--big", type=int, default=128, help="edge of the background jobs' volume")
    ap.add_argument("--bg-jobs", type=int, default=16, help="4-prompt jobs queued on the big volume")
    ap.add_argument("--upload-size", type=int, default=64, help="edge of the uploaded small volume")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--deadline", type=float, default=175.0,
                    help="hard bound of the run in seconds: no request starts later (left-over ones count as "
                         "errors); raise it together with --duration only to study RSS over a longer run")
    args = ap.parse_args()
    binary = Path(args.binary) if args.binary else serve_common.voxtell_binary(prefer_release=True)
    t_start = time.monotonic()
    tmp = Path(ROOT / "target" / "serve-load-test")
    tmp.mkdir(parents=True, exist_ok=True)
    small = synthetic(args.upload_size, 1, tmp / "small.nii.gz")
    big = synthetic(args.big, 2, tmp / "big.nii.gz")
    srv = serve_common.start_voxtell(["--cache-memory", args.cache_memory], binary=binary,
                                     log_path=tmp / "server.log")
    print(f"server: {binary.relative_to(ROOT) if binary.is_relative_to(ROOT) else binary}, pid {srv.pid}, "
          f"{srv.url}, --cache-memory {args.cache_memory}; {serve_common.cpu_model()}")
    base = srv.url
    prompts = ["liver", "left kidney", "lesion (liver)/segment 4", "läsion der leber"]
    rows, failed = [], []
    try:
        setup = httpx.Client(base_url=base, timeout=600)
        r = setup.post("/images", params={"include_image": "false"}, content=small)
        r.raise_for_status()
        small_shape = tuple(json.loads(r.headers["X-Meta"])["shape"])
        small_id = json.loads(r.headers["X-Meta"])["image_id"]
        job = setup.post("/jobs", json={"image_id": small_id, "prompts": prompts}).json()["job_id"]
        with setup.stream("GET", f"/jobs/{job}/events", timeout=None) as resp:
            lines = [json.loads(x) for x in resp.iter_lines() if x.strip()]
        assert lines[-1] == {"status": "done"}, lines[-3:]
        r = setup.get(f"/jobs/{job}/result")
        r.raise_for_status()
        ref_result = unpack_array(r.content)
        ref_result_bytes = r.content
        r = setup.post("/images", params={"include_image": "false"}, content=big)
        r.raise_for_status()
        big_id = json.loads(r.headers["X-Meta"])["image_id"]
        bg_jobs = [setup.post("/jobs", json={"image_id": big_id, "prompts": prompts}).json()["job_id"]
                   for _ in range(args.bg_jobs)]
        first_tile = None
        with setup.stream("GET", f"/jobs/{bg_jobs[0]}/events", timeout=None) as resp:
            for x in resp.iter_lines():
                if x.strip() and "done" in json.loads(x):
                    first_tile = json.loads(x)
                    break
        print(f"finished job {job[:8]}: {len(lines)} event lines, result {ref_result.shape}; "
              f"{args.bg_jobs} jobs queued on {args.big}^3 ({first_tile['total']} tiles x 4 prompts each); "
              f"setup {time.monotonic() - t_start:.1f} s")

        stats = {"warm-up": Stats(), "load": Stats()}
        stop = threading.Event()

        def worker(tid, n, st, deadline):
            rng = random.Random(args.seed * 1000 + tid)
            kinds = ["upload+image"] * 2 + ["upload-no-image"] * 2 + ["healthz", "capabilities", "result", "events"]
            c = httpx.Client(base_url=base, timeout=120)
            for i in range(n):
                if time.monotonic() > deadline or stop.is_set():
                    st.error("deadline", f"thread {tid}: {n - i} requests not made before the deadline")
                    break
                kind = rng.choice(kinds)
                t0 = time.monotonic()
                try:
                    if kind.startswith("upload"):
                        inc = kind == "upload+image"
                        r = c.post("/images", params={"include_image": "true" if inc else "false"}, content=small,
                                   headers={"Content-Type": "application/octet-stream"})
                        r.raise_for_status()
                        meta = json.loads(r.headers["X-Meta"])
                        if tuple(meta["shape"]) != small_shape:
                            raise ValueError(f"X-Meta shape {meta['shape']}")
                        if inc:
                            a = unpack_array(r.content)
                            if a.shape != small_shape or a.dtype != np.float32:
                                raise ValueError(f"image {a.dtype} {a.shape}")
                        elif r.content:
                            raise ValueError(f"{len(r.content)} body bytes with include_image=false")
                    elif kind == "healthz":
                        r = c.get("/healthz")
                        r.raise_for_status()
                        if r.json() != {"ok": True}:
                            raise ValueError(r.text)
                    elif kind == "capabilities":
                        r = c.get("/capabilities")
                        r.raise_for_status()
                        if r.json().get("model") != "cfg_a":
                            raise ValueError(r.text)
                    elif kind == "result":
                        r = c.get(f"/jobs/{job}/result")
                        r.raise_for_status()
                        if r.content != ref_result_bytes and not np.array_equal(unpack_array(r.content), ref_result):
                            raise ValueError("result differs from the first download")
                    else:
                        with c.stream("GET", f"/jobs/{job}/events") as resp:
                            resp.raise_for_status()
                            ev = [json.loads(x) for x in resp.iter_lines() if x.strip()]
                        if ev != [{"status": "done"}]:
                            raise ValueError(f"events {ev}")
                    st.ok(kind, time.monotonic() - t0)
                except Exception as e:  # noqa: BLE001 - every failure counts
                    detail = f"{type(e).__name__}: {e}"
                    if isinstance(e, httpx.HTTPStatusError):
                        detail += f" {e.response.text[:200]}"
                    st.error(kind, detail)
            c.close()

        def round_(name, n):
            st = stats[name]
            deadline = t_start + args.deadline
            ts = [threading.Thread(target=worker, args=(i, n, st, deadline)) for i in range(args.threads)]
            t0 = time.monotonic()
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            return time.monotonic() - t0

        # Warm-up: rounds until one background job has ended (its end allocates the masks and
        # the result payload: a peak the load rounds would otherwise see first).
        t_warm = time.monotonic()
        warm_rounds = 0
        while True:
            round_("warm-up", args.warmup)
            warm_rounds += 1
            codes = [setup.get(f"/jobs/{j}/result").status_code for j in bg_jobs[:2]]
            elapsed = time.monotonic() - t_warm
            if (codes[0] != 409 and elapsed >= args.warmup_min) or elapsed > args.warmup_limit:
                break
        wall_warm = time.monotonic() - t_warm
        rss_warm, rss_warm_min, rss_warm_max = rss_median(srv)
        print(f"warm-up: {warm_rounds} round(s) of {args.threads} x {args.warmup} requests in {wall_warm:.1f} s "
              f"(until the first background job ended: result status {codes[0]}), "
              f"{len(stats['warm-up'].errors)} errors; RSS {rss_warm / 1024:.1f} MiB "
              f"(samples {rss_warm_min / 1024:.1f}..{rss_warm_max / 1024:.1f})")

        # /healthz prober at ~20 Hz, own connection, during the load round.
        probe, probe_err = [], []
        probing = threading.Event()
        peak_rss = [0]

        def prober():
            c = httpx.Client(base_url=base, timeout=10)
            nxt = time.monotonic()
            while not probing.is_set():
                t0 = time.monotonic()
                try:
                    r = c.get("/healthz")
                    r.raise_for_status()
                    probe.append(time.monotonic() - t0)
                except Exception as e:  # noqa: BLE001
                    probe_err.append(f"{type(e).__name__}: {e}")
                peak_rss[0] = max(peak_rss[0], srv.rss_kib())
                nxt += 0.05
                time.sleep(max(0.0, nxt - time.monotonic()))
            c.close()

        pt = threading.Thread(target=prober)
        pt.start()
        t_load = time.monotonic()
        rounds = 0
        trend = []  # (s since the load started, RSS MiB) after every round
        while True:
            wall_round = round_("load", args.requests)
            rounds += 1
            trend.append((time.monotonic() - t_load, srv.rss_kib() / 1024))
            print(f"  load round {rounds}: {args.threads} x {args.requests} requests in {wall_round:.1f} s, "
                  f"errors so far {len(stats['load'].errors)}, RSS {srv.rss_kib() / 1024:.1f} MiB, "
                  f"/healthz probes so far {len(probe)}", flush=True)
            if time.monotonic() - t_load >= args.duration or time.monotonic() - t_start >= args.deadline - 20:
                break
        wall_load = time.monotonic() - t_load
        probing.set()
        pt.join()
        load_avg = open("/proc/loadavg").read().split()[:3]
        running = [j for j in bg_jobs if setup.get(f"/jobs/{j}/result").status_code == 409]
        rss_end, rss_end_min, rss_end_max = rss_median(srv)
        print(f"load: {rounds} round(s) of {args.threads} x {args.requests} requests in {wall_load:.1f} s, "
              f"{len(stats['load'].errors)} errors; RSS {rss_end / 1024:.1f} MiB "
              f"(samples {rss_end_min / 1024:.1f}..{rss_end_max / 1024:.1f}); load average {' '.join(load_avg)}; "
              f"background jobs not finished: {len(running)} of {len(bg_jobs)}")

        # The background work: how far it got.
        bg_codes = [setup.get(f"/jobs/{j}/result").status_code for j in bg_jobs]
        # 200: done, result cached; 410: done, result evicted (nobody fetched it); 409: not finished
        done_jobs = [c for c in bg_codes if c in (200, 410)]
        for j in bg_jobs:
            setup.post(f"/jobs/{j}/cancel")
        finals = []
        for j in bg_jobs:
            with setup.stream("GET", f"/jobs/{j}/events", timeout=60) as resp:
                ev = [json.loads(x) for x in resp.iter_lines() if x.strip()]
            finals.append(ev[-1].get("status") if ev else None)
        time.sleep(1.0)
        rss_idle = srv.rss_kib()
        hwm = srv.hwm_kib()
        setup.close()

        # Tables.
        print()
        kinds = sorted({k for s in stats.values() for k in s.lat} | {k for s in stats.values() for k, _ in s.errors})
        krows = []
        for name, st in stats.items():
            for k in kinds:
                lat = st.lat.get(k, [])
                errs = sum(1 for kk, _ in st.errors if kk == k)
                if not lat and not errs:
                    continue
                krows.append((name, k, len(lat), errs,
                              f"{pct(lat, 50) * 1000:.1f}" if lat else "-",
                              f"{pct(lat, 99) * 1000:.1f}" if lat else "-",
                              f"{max(lat) * 1000:.1f}" if lat else "-"))
        print(table(krows, ["round", "request", "ok", "errors", "p50 ms", "p99 ms", "max ms"]))
        errors = stats["warm-up"].errors + stats["load"].errors
        if errors:
            print("\nerrors (first 10):")
            for k, e in errors[:10]:
                print(f"  {k}: {e}")
        if probe_err:
            print("\n/healthz prober errors (first 5):", probe_err[:5])

        half = trend[len(trend) // 2:]
        if len(half) >= 2:
            ts, rs = [t for t, _ in half], [r for _, r in half]
            tm, rm = statistics.mean(ts), statistics.mean(rs)
            slope = sum((t - tm) * (r - rm) for t, r in half) / max(1e-9, sum((t - tm) ** 2 for t in ts)) * 60
        else:
            slope = float("nan")
        p50, p99, pmax = pct(probe, 50) * 1000, pct(probe, 99) * 1000, (max(probe) * 1000 if probe else float("nan"))
        limit_rss = rss_warm * 1.10
        checks = [
            ("load rounds", f"{rounds} in {wall_load:.0f} s", "-", True),
            ("errors (warm-up + load, all requests)", f"{len(errors)} of {stats['warm-up'].count + stats['load'].count}",
             "0", len(errors) == 0),
            ("/healthz prober errors", f"{len(probe_err)} of {len(probe) + len(probe_err)}", "0", not probe_err),
            ("RSS after warm-up", f"{rss_warm / 1024:.1f} MiB", "-", True),
            ("RSS at the end", f"{rss_end / 1024:.1f} MiB ({(rss_end / rss_warm - 1) * 100:+.1f} %)",
             f"<= {limit_rss / 1024:.1f} MiB (+10 %)", rss_end <= limit_rss),
            ("RSS trend over the second half of the load (least squares)", f"{slope:+.2f} MiB/min", "-", True),
            ("/healthz p50 (20 Hz prober, load rounds)", f"{p50:.1f} ms ({len(probe)} probes)", "-", True),
            ("/healthz p99", f"{p99:.1f} ms", "<= 100 ms", p99 <= 100),
            ("/healthz max", f"{pmax:.1f} ms", "<= 500 ms", pmax <= 500),
            ("peak RSS sampled during the load rounds", f"{peak_rss[0] / 1024:.1f} MiB", "-", True),
            ("RSS idle after cancelling the jobs / VmHWM", f"{rss_idle / 1024:.1f} / {hwm / 1024:.1f} MiB", "-", True),
            ("background jobs finished during the test",
             f"{len(done_jobs)} done ({bg_codes.count(410)} results evicted since), then {finals.count('cancelled')} cancelled",
             "worker busy throughout", len(running) >= 1),
            ("wall time (setup + rounds)", f"{time.monotonic() - t_start:.0f} s", f"<= {args.deadline + 10:.0f} s", True),
        ]
        print()
        print(table([(n, v, t, "PASS" if ok else "FAIL") for n, v, t, ok in checks],
                    ["measure", "value", "target", "result"]))
        failed = [n for n, _, _, ok in checks if not ok]
    finally:
        rc = srv.stop()
        panics = [line for line in srv.lines if "panick" in line.lower()]
        print(f"\nserver stopped (SIGTERM to pid {srv.pid}): exit code {rc}"
              + (f"; PANIC in its log: {panics[:3]}" if panics else ""))
        if rc != 0 or panics:
            failed.append("server exit")
        evicted = sum("evicted" in line for line in srv.lines)
        print(f"server log: {len(srv.lines)} lines, {evicted} evictions (--cache-memory), "
              f"kept in {(tmp / 'server.log').relative_to(ROOT)}")
        for f in ("small.nii.gz", "big.nii.gz"):
            (tmp / f).unlink(missing_ok=True)
    print(f"\n{'FAIL: ' + ', '.join(failed) if failed else 'all targets met'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
