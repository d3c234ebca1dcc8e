#!/usr/bin/env python3
"""Log-streaming throughput and memory: kiln-worker against buildbot-worker 4.3.0.

For each worker: start the benchmark master (bench/worker-stream, a minimal
msgpack_experimental_v7 master on 127.0.0.1 that discards output), create a
worker directory pointing at it, run the worker in the foreground, and let the
master measure one `shell` command that prints SCALE bytes in 100-byte lines.
Writes bench/results/worker-stream-<scale>.json and prints a table.

    python3 bench/worker-stream/run.py --scale smoke|full     (env BENCH_SCALE)

Targets (from the issue) are reported as met / not met, never asserted. The exit
status is non-zero only if a run failed (crash, timeout, wrong or missing data)
or a figure is missing. Python 3 standard library only.
"""

import argparse
import datetime
import json
import os
import platform
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCALES = {"smoke": 50_000_000, "full": 1_000_000_000}
LINE = 100  # bytes per line: 99 characters and "\n"
USER, PASSWORD = "w", "pass"
PROTOCOL = "msgpack_experimental_v7"
BUILDBOT_WORKER_VERSION = "4.3.0"
WORKERS = ("kiln-worker", "buildbot-worker")
# MB here is 10^6 bytes (MB/s too); /proc reports kB = KiB.
MB = 1_000_000
FIGURES = ("throughput_mb_s", "bytes_expected", "bytes_received", "idle_rss_kb", "peak_rss_kb", "elapsed_s", "version")


def log(msg):
    print(f"[worker-stream] {msg}", flush=True)


def kb_to_mb(kb):
    return None if kb is None else kb * 1024 / MB


def run_cmd(argv, timeout, **kw):
    """subprocess.run with a bound; returns CompletedProcess or raises RuntimeError."""
    try:
        return subprocess.run(argv, timeout=timeout, **kw)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{' '.join(map(str, argv))} did not finish within {timeout} s")


# --- setup -----------------------------------------------------------------------------

def ensure_venv(venv):
    bw = venv / "bin" / "buildbot-worker"
    if not bw.exists():
        log(f"no buildbot-worker in {venv}: creating it (python3 -m venv + pip install buildbot-worker=={BUILDBOT_WORKER_VERSION})")
        if not (venv / "bin" / "python").exists():
            r = run_cmd([sys.executable, "-m", "venv", str(venv)], 300)
            if r.returncode != 0:
                raise RuntimeError(f"python3 -m venv {venv} failed")
        r = run_cmd([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"buildbot-worker=={BUILDBOT_WORKER_VERSION}"], 900)
        if r.returncode != 0 or not bw.exists():
            raise RuntimeError(f"pip install buildbot-worker=={BUILDBOT_WORKER_VERSION} into {venv} failed")
    r = run_cmd([str(venv / "bin" / "python"), "-c", "import buildbot_worker; print(buildbot_worker.version)"], 60,
                capture_output=True, text=True)
    version = r.stdout.strip()
    if version != BUILDBOT_WORKER_VERSION:
        log(f"WARNING: {venv} has buildbot-worker {version!r}, not {BUILDBOT_WORKER_VERSION}")
    return version


def venv_packages(venv):
    """Versions of what shapes the stock worker's footprint (an installed Buildbot master
    adds Twisted plugins the worker loads: its idle RSS is ~5 MB higher with it)."""
    code = ("import json\nfrom importlib import metadata\nout = {}\n"
            "for n in ('buildbot-worker', 'buildbot', 'twisted', 'autobahn', 'msgpack'):\n"
            "    try: out[n] = metadata.version(n)\n"
            "    except metadata.PackageNotFoundError: out[n] = None\n"
            "print(json.dumps(out))")
    try:
        r = run_cmd([str(venv / "bin" / "python"), "-c", code], 60, capture_output=True, text=True)
        return json.loads(r.stdout)
    except (RuntimeError, OSError, ValueError):
        return None


def build(no_build):
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    if not no_build:
        log("cargo build --release -p kiln-bench-worker-stream -p kiln-worker")
        r = run_cmd(["cargo", "build", "--release", "-p", "kiln-bench-worker-stream", "-p", "kiln-worker"], 3600, cwd=ROOT)
        if r.returncode != 0:
            raise RuntimeError("cargo build failed")
    master, kiln = target / "release" / "kiln-bench-worker-stream", target / "release" / "kiln-worker"
    for b in (master, kiln):
        if not b.exists():
            raise RuntimeError(f"{b} was not built")
    return master, kiln


def producer_command(nbytes):
    return f"yes \"$(printf '%099d' 0)\" | head -c {nbytes}"


PRODUCER_CHECK_BYTES = 500_000_000


def producer_speed(nbytes):
    """The command's own speed into a pipe with a fast reader (dd): it must be far above
    the workers'. Measured over at least PRODUCER_CHECK_BYTES so start-up does not dominate."""
    n = max(nbytes, PRODUCER_CHECK_BYTES)
    start = time.monotonic()
    r = run_cmd(["sh", "-c", producer_command(n) + " | dd of=/dev/null bs=1M status=none"], 600)
    secs = time.monotonic() - start
    return None if r.returncode != 0 else n / MB / secs


# --- one run ---------------------------------------------------------------------------

class Lines:
    """Collects a pipe's lines in a thread, so reads can be bounded in time."""

    def __init__(self, pipe):
        self.q = queue.Queue()
        self.all = []
        threading.Thread(target=self._pump, args=(pipe,), daemon=True).start()

    def _pump(self, pipe):
        for line in pipe:
            self.all.append(line)
            self.q.put(line)
        self.q.put(None)

    def wait_for(self, prefix, timeout):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                line = self.q.get(timeout=left)
            except queue.Empty:
                return None
            if line is None:
                return None
            if line.startswith(prefix):
                return line[len(prefix):].strip()


def tail(path, n=15):
    try:
        return "".join(Path(path).read_text(errors="replace").splitlines(keepends=True)[-n:])
    except OSError:
        return ""


def stop_group(proc, grace):
    """Waits up to `grace` s for our process to exit by itself, then SIGTERM, then SIGKILL
    its process group (it was started in a session of its own, and is signalled only while
    it is alive and unreaped, so the group is still ours)."""
    how = "exited by itself"
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None:
            how = f"stopped with {sig.name}"
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
        try:
            proc.wait(timeout=grace)
            break
        except subprocess.TimeoutExpired:
            continue
    return how


def run_one(name, master_bin, worker_cmds, nbytes, args, work):
    wdir = work / name
    shutil.rmtree(wdir, ignore_errors=True)
    wdir.mkdir(parents=True)
    basedir = wdir / "worker"
    res = {"worker": name, "bytes_expected": nbytes}
    stream_timeout = args.stream_timeout or max(120.0, nbytes / MB)  # ≥ 1 MB/s or it failed
    master_argv = [str(master_bin), "--bytes", str(nbytes), "--idle-secs", str(args.idle_secs),
                   "--user", USER, "--password", PASSWORD, "--stream-timeout", str(stream_timeout),
                   "--connect-timeout", "60", "--request-timeout", "30"]
    master_log = open(wdir / "master.log", "w")
    master = subprocess.Popen(master_argv, stdout=subprocess.PIPE, stderr=master_log, text=True, start_new_session=True)
    out = Lines(master.stdout)
    worker = None
    try:
        port = out.wait_for("PORT ", 15)
        if not port:
            raise RuntimeError("the bench master did not print its port")
        create, run = worker_cmds(basedir, f"127.0.0.1:{port}")
        r = run_cmd(create, 120, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        (wdir / "create-worker.log").write_text(r.stdout or "")
        if r.returncode != 0:
            raise RuntimeError(f"create-worker exited {r.returncode}: {(r.stdout or '').strip()[-500:]}")
        if not basedir.is_dir():
            raise RuntimeError(f"create-worker exited 0 but did not create {basedir}")
        res["load_avg_1m_before"] = os.getloadavg()[0]
        worker_log = open(wdir / "worker.log", "w")
        worker = subprocess.Popen(run, stdin=subprocess.DEVNULL, stdout=worker_log, stderr=subprocess.STDOUT,
                                  cwd=wdir, start_new_session=True)
        log(f"{name}: master pid {master.pid} on port {port}, worker pid {worker.pid}")
        # Bound the whole run; a worker that dies first fails it quickly.
        deadline = time.monotonic() + 60 + args.idle_secs + stream_timeout + 90
        worker_gone_at = None
        while master.poll() is None:
            if time.monotonic() > deadline:
                raise RuntimeError("the run did not finish in time")
            if worker.poll() is not None:
                worker_gone_at = worker_gone_at or time.monotonic()
                if time.monotonic() - worker_gone_at > 10:
                    raise RuntimeError(f"the worker exited with status {worker.returncode} before the run finished")
            time.sleep(0.2)
        result = out.wait_for("RESULT ", 5)
        if result is None:
            raise RuntimeError(f"the bench master exited {master.returncode} without a result")
        res.update(json.loads(result))
        res["load_avg_1m_after"] = os.getloadavg()[0]
        if not res.get("ok"):
            raise RuntimeError(res.get("error", "the bench master reported a failure"))
        if res.get("worker_pid") != worker.pid:
            res["note"] = f"connection held by pid {res.get('worker_pid')}, started pid {worker.pid}"
    except Exception as e:  # noqa: BLE001 - every failure is reported, none hides another worker's run
        res["ok"] = False
        res.setdefault("error", str(e))  # the master's own error text when it gave one
    finally:
        if worker is not None:
            res["worker_stop"] = stop_group(worker, 10)
            res["worker_exit_status"] = worker.returncode
        if master.poll() is None:
            stop_group(master, 0.5)
        master_log.close()
    res["version"] = res.get("worker_version")
    if not res.get("ok"):
        log(f"{name}: FAILED: {res.get('error')}")
        for f in ("master.log", "worker.log", "worker/twistd.log", "worker/kiln-worker.log"):
            t = tail(wdir / f)
            if t:
                print(f"--- {wdir / f} (last lines) ---\n{t.rstrip()[-4000:]}", flush=True)
    return res


# --- report ----------------------------------------------------------------------------

def ratio(a, b):
    return a / b if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else None


def targets(kiln, bb):
    tp_k, tp_b = kiln.get("throughput_mb_s"), bb.get("throughput_mb_s")
    def t(name, value, op, threshold, unit):
        met = None if value is None else (value >= threshold if op == ">=" else value <= threshold)
        return {"target": name, "value": value, "op": op, "threshold": threshold, "unit": unit, "met": met}
    return [
        t("kiln throughput >= 10x buildbot-worker", ratio(tp_k, tp_b), ">=", 10.0, "x"),
        t("kiln throughput >= 300 MB/s", tp_k, ">=", 300.0, "MB/s"),
        t("kiln idle RSS <= 8 MB", kb_to_mb(kiln.get("idle_rss_kb")), "<=", 8.0, "MB"),
        t("kiln peak RSS while streaming <= 32 MB", kb_to_mb(kiln.get("peak_rss_kb")), "<=", 32.0, "MB"),
    ]


def fmt(v, digits=1):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def print_table(report):
    runs = report["workers"]
    names = [n for n in WORKERS if n in runs]
    k, b = runs.get("kiln-worker", {}), runs.get("buildbot-worker", {})
    rows = [
        ("throughput (MB/s)", "throughput_mb_s", 1, lambda r: r.get("throughput_mb_s")),
        ("elapsed (s)", "elapsed_s", 2, lambda r: r.get("elapsed_s")),
        ("stdout bytes received", "bytes_received", 0, lambda r: r.get("bytes_received")),
        ("idle RSS (MB)", "idle_rss_kb", 1, lambda r: kb_to_mb(r.get("idle_rss_kb"))),
        ("peak RSS streaming (MB)", "peak_rss_kb", 1, lambda r: kb_to_mb(r.get("peak_rss_kb"))),
        ("worker CPU (s)", "worker_cpu_s", 2, lambda r: r.get("worker_cpu_s")),
        ("updates", "updates", 0, lambda r: r.get("updates")),
    ]
    print()
    print(f"worker-stream, {report['scale']}: {report['bytes']:,} bytes of stdout in {LINE}-byte lines "
          f"(producer alone: {fmt(report.get('producer_mb_s'), 0)} MB/s); MB = 10^6 bytes")
    head = f"{'':26}" + "".join(f"{n:>18}" for n in names) + (f"{'kiln/buildbot':>16}" if len(names) == 2 else "")
    print(head)
    for label, key, digits, get in rows:
        line = f"{label:26}" + "".join(f"{fmt(get(runs[n]), digits):>18}" for n in names)
        if len(names) == 2:
            line += f"{fmt(ratio(get(k), get(b)), 2):>16}"
        print(line)
    print(f"{'version':26}" + "".join(f"{str(runs[n].get('version') or '-'):>18}" for n in names))
    print(f"{'status':26}" + "".join(f"{'ok' if runs[n].get('ok') else 'FAILED':>18}" for n in names))
    if report.get("targets"):
        print("\ntargets (reported, not asserted):")
        for t in report["targets"]:
            verdict = {True: "met", False: "NOT MET", None: "no figure"}[t["met"]]
            print(f"  {t['target']:42} {fmt(t['value'], 2):>10} {t['unit']:5} {verdict}")
    print()


def git_commit():
    """HEAD, with "-dirty" when tracked files other than bench/results/ differ from it."""
    try:
        r = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        head = r.stdout.strip() or None
        d = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no", "--", ".",
                            ":(exclude)bench/results"], capture_output=True, text=True, timeout=10)
        return f"{head}-dirty" if head and d.stdout.strip() else head
    except (OSError, subprocess.TimeoutExpired):
        return None


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", choices=sorted(SCALES), default=os.environ.get("BENCH_SCALE", "smoke"))
    ap.add_argument("--workers", default=",".join(WORKERS), help="comma-separated subset of: " + ", ".join(WORKERS))
    ap.add_argument("--idle-secs", type=float, default=5.0, help="idle time before the idle RSS is read")
    ap.add_argument("--stream-timeout", type=float, default=0, help="seconds the stream may take (default: bytes at 1 MB/s, at least 120)")
    ap.add_argument("--out", type=Path, help="JSON output (default bench/results/worker-stream-<scale>.json)")
    ap.add_argument("--no-build", action="store_true", help="use the existing release binaries")
    args = ap.parse_args()
    if args.scale not in SCALES:
        ap.error(f"unknown scale {args.scale!r}")
    workers = [w.strip() for w in args.workers.split(",") if w.strip()]
    unknown = [w for w in workers if w not in WORKERS]
    if unknown or not workers:
        ap.error(f"unknown worker(s) {unknown}; choose from {WORKERS}")
    nbytes = SCALES[args.scale]
    out_path = args.out or ROOT / "bench" / "results" / f"worker-stream-{args.scale}.json"
    venv = Path(os.environ.get("KILN_INTEROP_VENV", ROOT / "interop" / ".venv"))
    if not venv.is_absolute():
        venv = ROOT / venv
    work = ROOT / "bench" / "work" / "worker-stream"

    master_bin, kiln_bin = build(args.no_build)
    bb_version = ensure_venv(venv) if "buildbot-worker" in workers else None
    as_root = os.geteuid() == 0

    def kiln_cmds(basedir, master):
        # As root, kiln-worker refuses build commands unless the worker dir allows it.
        create = [str(kiln_bin), "create-worker", "--protocol", PROTOCOL] + (["--allow-root"] if as_root else []) \
            + [str(basedir), master, USER, PASSWORD]
        run = [str(kiln_bin), "run", str(basedir)]
        return create, run

    def buildbot_cmds(basedir, master):
        bw = str(venv / "bin" / "buildbot-worker")
        return ([bw, "create-worker", "--protocol", PROTOCOL, str(basedir), master, USER, PASSWORD],
                [bw, "start", "--nodaemon", str(basedir)])  # twistd in this very process

    producer = producer_speed(nbytes)
    log(f"producer alone: {fmt(producer, 0)} MB/s")
    report = {
        "benchmark": "worker-stream",
        "scale": args.scale,
        "bytes": nbytes,
        "line_bytes": LINE,
        "command": producer_command(nbytes),
        "producer_mb_s": producer,
        "idle_secs": args.idle_secs,
        "units": "MB = 10^6 bytes; *_kb fields are /proc kB (KiB); throughput = stdout bytes / (start_command sent .. complete received)",
        "date": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
        "git_commit": git_commit(),
        "host": {"cpu": cpu_model(), "cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()},
        "workers": {},
    }
    kiln_version = None
    if "kiln-worker" in workers:
        try:
            r = run_cmd([str(kiln_bin), "--version"], 30, capture_output=True, text=True)
            kiln_version = (r.stdout or r.stderr).strip() or None
        except (RuntimeError, OSError):
            pass

    for name in workers:
        log(f"{name}: streaming {nbytes:,} bytes")
        cmds = kiln_cmds if name == "kiln-worker" else buildbot_cmds
        res = run_one(name, master_bin, cmds, nbytes, args, work)
        if name == "kiln-worker":
            res["binary_version"] = kiln_version
            res["version"] = res.get("version") or kiln_version
        else:
            res["version"] = res.get("version") or bb_version
            res["venv"] = str(venv)
            res["venv_packages"] = venv_packages(venv)
        report["workers"][name] = res
        log(f"{name}: {'ok' if res.get('ok') else 'FAILED'}, {fmt(res.get('throughput_mb_s'))} MB/s")

    # Ratios and targets only from runs that completed correctly.
    good = {n: r for n, r in report["workers"].items() if r.get("ok")}
    k = good.get("kiln-worker", {} if "kiln-worker" in report["workers"] else None)
    b = good.get("buildbot-worker", {} if "buildbot-worker" in report["workers"] else None)
    if k is not None and b is not None:
        report["kiln_over_buildbot"] = {
            "throughput": ratio(k.get("throughput_mb_s"), b.get("throughput_mb_s")),
            "idle_rss": ratio(k.get("idle_rss_kb"), b.get("idle_rss_kb")),
            "peak_rss": ratio(k.get("peak_rss_kb"), b.get("peak_rss_kb")),
        }
    if k is not None:
        report["targets"] = targets(k, b or {})

    missing = [f"{n}.{f}" for n, r in report["workers"].items() for f in FIGURES if r.get(f) is None]
    failed = [n for n, r in report["workers"].items() if not r.get("ok")]
    report["ok"] = not missing and not failed
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    log(f"wrote {out_path.relative_to(ROOT) if out_path.is_relative_to(ROOT) else out_path}")
    if failed or missing:
        log(f"FAILED runs: {', '.join(failed) or 'none'}; missing figures: {', '.join(missing) or 'none'}")
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RuntimeError as e:
        log(f"error: {e}")
        sys.exit(1)
