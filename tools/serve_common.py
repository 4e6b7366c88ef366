"""Shared helpers of tools/serve_napari_check.py, tools/serve_load_test.py and
tools/serve_bench_vs_official.py: start a server process on an ephemeral port, wait for it,
read its memory from /proc, stop it by its pid. Standard library only.

Not a fixture generator; CI never runs these scripts.
"""
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The tiny test model and its bank (fixtures/infer/predict, gen_infer_fixtures.py).
TINY_MODEL = ROOT / "fixtures/fusion/cfg_a"
TINY_BANK = ROOT / "fixtures/infer/predict/bank.npz"


def voxtell_binary(prefer_release=False):
    """target/release/voxtell when asked for and present, else target/debug/voxtell."""
    release = ROOT / "target/release/voxtell"
    debug = ROOT / "target/debug/voxtell"
    if prefer_release and release.exists():
        return release
    if debug.exists():
        return debug
    if release.exists():
        return release
    sys.exit("no target/debug/voxtell (cargo build -p voxtell-cli) nor target/release/voxtell")


class ServerProcess:
    """A server started as a child process; its stderr is kept (in memory and in `log_path`).

    `ready_pattern` must match a stderr line carrying `http://HOST:PORT` once the server
    accepts connections (`voxtell serve`: "Serving on http://127.0.0.1:PORT ...";
    uvicorn: "Uvicorn running on http://127.0.0.1:PORT").
    """

    def __init__(self, argv, ready_pattern, log_path=None, env=None, timeout=600.0):
        self.argv = [str(a) for a in argv]
        self.lines = []
        self.log_path = log_path
        self._log = open(log_path, "w") if log_path else None
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, env=env, cwd=ROOT, text=True, errors="replace",
        )
        self.pid = self.proc.pid
        self.url = None
        ready = threading.Event()
        pattern = re.compile(ready_pattern)

        def pump():
            for line in self.proc.stdout:
                self.lines.append(line.rstrip("\n"))
                if self._log:
                    self._log.write(line)
                    self._log.flush()
                if self.url is None:
                    m = pattern.search(line)
                    if m:
                        u = re.search(r"http://[0-9.]+:[0-9]+", line)
                        self.url = u.group(0) if u else None
                        ready.set()
            ready.set()

        self._pump = threading.Thread(target=pump, daemon=True)
        self._pump.start()
        t0 = time.monotonic()
        while not ready.wait(0.2):
            if time.monotonic() - t0 > timeout:
                self.stop()
                raise RuntimeError(f"server not ready after {timeout:.0f} s: {' '.join(self.argv)}")
        if self.url is None:
            self.stop()
            tail = "\n".join(self.lines[-30:])
            raise RuntimeError(f"server exited before it was ready ({' '.join(self.argv)}):\n{tail}")
        self.started = time.monotonic() - t0

    def status(self):
        """/proc/PID/status as a dict of kB values (VmRSS, VmHWM, ...)."""
        out = {}
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    k, _, v = line.partition(":")
                    v = v.strip()
                    if v.endswith(" kB"):
                        out[k] = int(v[:-3])
        except FileNotFoundError:
            pass
        return out

    def rss_kib(self):
        return self.status().get("VmRSS", 0)

    def hwm_kib(self):
        return self.status().get("VmHWM", 0)

    def reset_hwm(self):
        """Reset VmHWM to the current RSS (echo 5 > /proc/PID/clear_refs); False if refused."""
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    def alive(self):
        return self.proc.poll() is None

    def stop(self, timeout=30.0):
        """SIGTERM by pid, then SIGKILL by pid after `timeout` s. Returns the exit code."""
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait()
        self._pump.join(5)
        if self._log:
            self._log.close()
            self._log = None
        return self.proc.returncode


def start_voxtell(extra_args=(), binary=None, model=TINY_MODEL, bank=TINY_BANK, log_path=None,
                  max_memory="4G"):
    """`voxtell serve` on 127.0.0.1:0 with the given model and bank."""
    binary = binary or voxtell_binary()
    argv = [binary, "serve", "-m", model, "--embeddings", bank, "--port", "0"]
    if max_memory:
        argv += ["--max-memory", max_memory]
    argv += list(extra_args)
    env = dict(os.environ)
    env.pop("VOXTELL_API_KEY", None)
    return ServerProcess(argv, r"Serving on http://", log_path=log_path, env=env)


def cpu_model():
    """'model name (family F, model M, stepping S)' from /proc/cpuinfo."""
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                k, _, v = line.partition(":")
                k = k.strip()
                if k and k not in info:
                    info[k] = v.strip()
                if not line.strip():
                    break
    except FileNotFoundError:
        return "?"
    return (f"{info.get('model name', '?')} (family {info.get('cpu family', '?')}, "
            f"model {info.get('model', '?')}, stepping {info.get('stepping', '?')}), "
            f"{os.cpu_count()} CPUs")


def table(rows, headers):
    """A Markdown table as text."""
    rows = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |",
           "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    for r in rows:
        out.append("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
    return "\n".join(out)
