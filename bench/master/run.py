#!/usr/bin/env python3
"""Master benchmarks: the Kiln master (`kiln run`) against the Buildbot 4.3.0 master, same run.

    bench/run --scale smoke|full [--systems kiln,buildbot] [--no-build]

Workloads (targets are ratios against Buildbot as measured here, or absolute):
  W1  N builds of `true` (one shell step) on 8 kiln-workers: builds/s end to end, and master
      CPU time (utime+stime from /proc, master process and its descendants) per build; the
      median of several rounds on the same warm master (full: 3).
  W2  one build whose step prints a small and one a large log (full: 100 MB and 1 GB) through
      kiln-worker: end-to-end MB/s (step start .. build seen complete), master RSS growth
      during the large log, and `GET /api/v2/logs/{id}/raw` download MB/s.
  W3  idle connected workers: Kiln with the kiln-swarm fake workers, Buildbot with real
      kiln-worker processes: master RSS delta / n.
  W5  start-up: spawn .. first HTTP 200 on /api/v2/builders, and idle RSS after start.

Writes bench/results/master-<scale>.json, bench/REPORT.md and PNG plots. Targets are
reported, never asserted; the exit status is non-zero when a run failed or a figure is
missing. Runs under the bench venv (matplotlib) made by bench/run; plots are skipped with a
warning when matplotlib is missing.
"""

import argparse
import concurrent.futures
import datetime
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
WORK = ROOT / "bench" / "work" / "master"
RESULTS = ROOT / "bench" / "results"
PLOTS = RESULTS / "plots"
MB = 1_000_000
PASSWORD = "bench-pass"
PROTOCOL = "msgpack_experimental_v7"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024

SCALES = {
    "smoke": {"w1_builds": 40, "w1_rounds": 1, "w2_sizes": [2 * MB, 10 * MB], "w3_kiln": 200, "w3_buildbot": 20, "w3_buildbot_swarm": 50,
              "w5_runs": 3},
    "full": {"w1_builds": 400, "w1_rounds": 3, "w2_sizes": [100 * MB, 1000 * MB], "w3_kiln": 10_000, "w3_buildbot": 100,
             "w3_buildbot_swarm": 1000, "w5_runs": 5},
}
SYSTEMS = ("kiln", "buildbot")
KEEP_WORK = False  # --keep-work: leave the masters' databases in bench/work/master


def log(msg):
    print(f"[bench-master {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- /proc ---------------------------------------------------------------------------------

def children_of(pid):
    """pid and all its live descendants."""
    kids = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def cpu_s(pid):
    """utime+stime (s) of pid and its live descendants (plus what they reaped)."""
    total = 0.0
    for p in children_of(pid):
        try:
            f = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields 14..17 of stat (utime stime cutime cstime) are 11..14 after the comm
        total += sum(int(x) for x in f[11:15]) / CLK_TCK
    return total


def rss_kb(pid):
    """VmRSS (KiB) of pid and its live descendants."""
    total = 0
    for p in children_of(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def hwm_reset(pid):
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def hwm_kb(pid):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class RssSampler:
    """Samples a process tree's RSS every `interval` s in a thread."""

    def __init__(self, pid, interval=0.05):
        self.pid, self.interval, self.samples = pid, interval, []
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            self.samples.append((time.monotonic() - self._t0, rss_kb(self.pid)))
            self._stop.wait(self.interval)

    def stop(self):
        self._stop.set()
        self._thread.join(2)
        return max((kb for _, kb in self.samples), default=None)


# --- HTTP ----------------------------------------------------------------------------------

def urlopen(req, timeout):
    """urlopen whose HTTP errors say which URL and what the server answered."""
    try:
        return urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        url = req if isinstance(req, str) else req.full_url
        raise RuntimeError(f"HTTP {e.code} from {url}: {e.read()[:500]!r}") from None


def get_json(url, timeout=60):
    with urlopen(url, timeout) as r:
        return json.load(r)


def http_status(url, timeout=2):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (OSError, ValueError):
        return None


def rpc(url, method, params, timeout=60):
    body = json.dumps({"jsonrpc": "2.0", "method": method, "id": 1, "params": params}).encode()
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    with urlopen(req, timeout) as r:
        res = json.load(r)
    if "error" in res:
        raise RuntimeError(f"JSON-RPC {method} on {url} failed: {res['error']}")
    return res.get("result")


def wait_for(pred, timeout, what, interval=0.1):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path, n=25):
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def stop_proc(p, grace=30):
    """SIGTERM our child, then SIGKILL its process group (it has a session of its own)."""
    if p is None or p.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10)):
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            return
        try:
            p.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


# --- masters ---------------------------------------------------------------------------------

class Master:
    """A running master of either system."""

    def __init__(self, system, dir, proc, web_port, worker_port, startup_s):
        self.system, self.dir, self.proc = system, dir, proc
        self.web_port, self.worker_port, self.startup_s = web_port, worker_port, startup_s
        self.url = f"http://127.0.0.1:{web_port}"
        self.builderids = {}

    @property
    def pid(self):
        return self.proc.pid

    def api(self, path):
        return get_json(f"{self.url}/api/v2/{path}")

    def builder_id(self, name):
        if name not in self.builderids:
            for b in self.api("builders")["builders"]:
                self.builderids[b["name"]] = b["builderid"]
        if name not in self.builderids:
            raise RuntimeError(f"{self.system}: the master has no builder {name!r}")
        return self.builderids[name]

    def force(self, builder):
        return rpc(f"{self.url}/api/v2/forceschedulers/force", "force", {"builderid": self.builder_id(builder)})

    def connected_workers(self):
        ws = self.api("workers")["workers"]
        return sum(1 for w in ws if w.get("connected_to"))

    def builds(self, builder, complete=True, after=0):
        """The builder's builds with an id above `after`; only the fields the benchmark reads,
        so that polling while a workload runs costs either master little, and the same."""
        bid = self.builder_id(builder)
        q = f"builds?builderid={bid}&buildid__gt={after}" + ("&complete=true" if complete else "")
        q += "&field=buildid&field=builderid&field=results&field=complete"
        return self.api(q)["builds"]

    def log_text(self):
        return tail(self.logfile, 40)

    def stop(self):
        stop_proc(self.proc)

    def drop_database(self):
        """Frees the disk a finished workload used (a full W2 leaves >1 GB of log in SQLite)."""
        if not KEEP_WORK:
            for f in self.dir.glob("state.sqlite*"):
                f.unlink(missing_ok=True)


class System:
    name = "?"

    def __init__(self, args):
        self.args = args

    def spawn(self, dir, env):
        raise NotImplementedError

    def prepare(self, dir, nworkers, log_sizes):
        """Creates the master directory; returns (web_port, worker_port, env)."""
        raise NotImplementedError

    def start(self, tag, nworkers, log_sizes, prepared=None):
        dir = WORK / self.name / tag
        if prepared is None:
            shutil.rmtree(dir, ignore_errors=True)
            dir.mkdir(parents=True)
            prepared = self.prepare(dir, nworkers, log_sizes)
        web_port, worker_port, env = prepared
        logf = open(dir / "master.out", "ab")
        t0 = time.monotonic()
        proc = subprocess.Popen(self.argv(dir), cwd=dir, env=env, stdin=subprocess.DEVNULL, stdout=logf,
                                stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{web_port}/api/v2/builders"
        while True:
            if http_status(url) == 200:
                startup = time.monotonic() - t0
                break
            if proc.poll() is not None:
                raise RuntimeError(f"{self.name} master exited {proc.returncode} before answering; "
                                   f"{dir}/master.out:\n{tail(dir / 'master.out')}\n{tail(self.logfile(dir))}")
            if time.monotonic() - t0 > 120:
                stop_proc(proc)
                raise RuntimeError(f"{self.name} master: no HTTP 200 on {url} within 120 s")
            time.sleep(0.002)
        m = Master(self.name, dir, proc, web_port, worker_port, startup)
        m.logfile = self.logfile(dir)
        m.prepared = prepared
        return m


class Buildbot(System):
    name = "buildbot"

    def __init__(self, args, venv):
        super().__init__(args)
        self.venv = venv

    def logfile(self, dir):
        return dir / "twistd.log"

    def argv(self, dir):
        # --nodaemon: twistd runs in this very process, so its pid is the master's.
        return [str(self.venv / "bin" / "buildbot"), "start", "--nodaemon", str(dir)]

    def prepare(self, dir, nworkers, log_sizes):
        web, wport = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env.update({"BENCH_MSGPACK_PORT": str(wport), "BENCH_WWW_PORT": str(web), "BENCH_WORKERS": str(nworkers),
                    "BENCH_PASSWORD": PASSWORD, "BENCH_LOG_SIZES": ",".join(map(str, log_sizes))})
        r = subprocess.run([str(self.venv / "bin" / "buildbot"), "create-master", "-r", str(dir)], env=env,
                           capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise RuntimeError(f"buildbot create-master failed: {r.stdout}{r.stderr}")
        shutil.copy(HERE / "master.cfg", dir / "master.cfg")
        return web, wport, env


class Kiln(System):
    name = "kiln"

    def __init__(self, args, bin):
        super().__init__(args)
        self.bin = bin

    def logfile(self, dir):
        return dir / "master.out"

    def argv(self, dir):
        return [str(self.bin), "run", str(dir)]

    def prepare(self, dir, nworkers, log_sizes):
        web, wport = free_port(), free_port()
        (dir / "secrets").mkdir(exist_ok=True)
        (dir / "secrets" / "bench-pass").write_text(PASSWORD + "\n")
        (dir / "master.star").write_text(kiln_star(dir, web, wport, nworkers, log_sizes))
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "warn")
        return web, wport, env


def kiln_star(dir, web, wport, nworkers, log_sizes):
    """The same farm as master.cfg, in master.star."""
    lines = [
        "# Generated by bench/master/run.py: the farm of bench/master/master.cfg for Kiln.",
        f'MASTER = master(title = "kiln-bench", db_url = "sqlite:{dir}/state.sqlite", '
        f'worker_port = {wport}, web_port = {web}, bind = "127.0.0.1", '
        # W3's 10,000 swarm workers come from 4 loopback addresses: above the default caps
        # (8192 open, 128 per address), which are for a farm on the internet.
        f'max_connections = {max(8192, nworkers + 1024)}, max_connections_per_address = {max(128, nworkers)})',
        f'NAMES = ["w%d" % i for i in range({nworkers})]',
        'WORKERS = [worker(n, password = secret("bench-pass")) for n in NAMES]',
        "def producer(n):",
        "    return \"date +%s.%N > ../start.marker; yes \\\"$(printf '%099d' 0)\\\" | head -c \" + str(n)",
        "BUILDERS = [",
        '    builder("noop", workers = NAMES[:8], collapse_requests = False,',
        '            steps = [shell(name = "true", command = ["true"])]),',
        '    builder("idle", workers = NAMES, steps = [shell(name = "true", command = ["true"])]),',
        "] + [",
        '    builder("log-%d" % n, workers = NAMES[:1], collapse_requests = False,',
        '            steps = [shell(name = "produce", command = producer(n))])',
        f"    for n in {list(log_sizes)}",
        "]",
        'SCHEDULERS = [force("force", builder_names = [b["name"] for b in BUILDERS])]',
    ]
    return "\n".join(lines) + "\n"


# --- workers ---------------------------------------------------------------------------------

class KilnWorkers:
    """kiln-worker processes w{first}..w{first+n-1} attached to a master."""

    def __init__(self, bin, master, n, first=0):
        self.procs = []
        root = master.dir / "workers"
        root.mkdir(exist_ok=True)
        allow_root = ["--allow-root"] if os.geteuid() == 0 else []
        self.basedirs = {}
        for i in range(first, first + n):
            name = f"w{i}"
            base = root / name
            shutil.rmtree(base, ignore_errors=True)
            r = subprocess.run([str(bin), "create-worker", "--protocol", PROTOCOL, *allow_root, str(base),
                                f"127.0.0.1:{master.worker_port}", name, PASSWORD],
                               capture_output=True, text=True, timeout=60)
            if r.returncode != 0:
                raise RuntimeError(f"kiln-worker create-worker {name} failed: {r.stdout}{r.stderr}")
            self.basedirs[name] = base
            out = open(root / f"{name}.out", "wb")
            self.procs.append(subprocess.Popen([str(bin), "run", str(base)], cwd=root, stdin=subprocess.DEVNULL,
                                               stdout=out, stderr=subprocess.STDOUT, start_new_session=True))

    def check_alive(self):
        dead = [p.pid for p in self.procs if p.poll() is not None]
        if dead:
            raise RuntimeError(f"kiln-worker processes exited: {dead}")

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for p in self.procs:
            stop_proc(p, grace=10)


def wait_connected(master, n, workers=None, timeout=300):
    def ok():
        if workers is not None:
            workers.check_alive()
        if master.proc.poll() is not None:
            raise RuntimeError(f"{master.system} master died: {master.log_text()}")
        try:
            return master.connected_workers() >= n
        except (OSError, ValueError):
            return False
    wait_for(ok, timeout, f"{n} workers connected to the {master.system} master", interval=0.25)


# --- workloads --------------------------------------------------------------------------------

def adaptive_wait(pred, timeout, what, t0):
    """Polls `pred` at ~1% of the elapsed time (10 ms .. 1 s): precise for fast runs,
    cheap for the master on slow ones."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(min(1.0, max(0.01, (time.monotonic() - t0) / 100)))


def w1(system, args, scale, kiln_worker):
    n = scale["w1_builds"]
    res = {}
    m = system.start("w1w2", 8, scale["w2_sizes"])
    workers = None
    try:
        workers = KilnWorkers(kiln_worker, m, 8)
        wait_connected(m, 8, workers)
        # Warm-up: one build per worker, not counted.
        warm = 8
        for _ in range(warm):
            m.force("noop")
        adaptive_wait(lambda: len(m.builds("noop")) >= warm, 300, "the warm-up builds", time.monotonic())
        # Several rounds on the same warm master: one round of a few hundred builds is over in
        # about a second for Kiln, so a single sample moves with whatever else the machine does.
        rounds = [w1_round(m, n) for _ in range(scale["w1_rounds"])]
        builds = m.builds("noop")
        bad = [b["buildid"] for b in builds if b.get("results") != 0]
        if bad:
            raise RuntimeError(f"{len(bad)} noop builds did not succeed (e.g. {bad[:5]})")
        med = lambda k: statistics.median(r[k] for r in rounds)
        res.update({"builds": n, "rounds": len(rounds), "elapsed_s": med("elapsed_s"), "force_s": med("force_s"),
                    "builds_per_s": med("builds_per_s"), "master_cpu_s": med("master_cpu_s"),
                    "cpu_ms_per_build": med("cpu_ms_per_build"),
                    "builds_per_s_rounds": [r["builds_per_s"] for r in rounds],
                    "cpu_ms_per_build_rounds": [r["cpu_ms_per_build"] for r in rounds],
                    "timeline": rounds[len(rounds) // 2]["timeline"][-400:]})
        res["w2"] = w2(m, workers, scale)
    finally:
        if workers:
            workers.stop()
        m.stop()
        m.drop_database()
    return res


def w1_round(m, n):
    """Forces `n` more noop builds and times them."""
    before = max((b["buildid"] for b in m.builds("noop")), default=0)
    c0, t0 = cpu_s(m.pid), time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(2) as ex:
        list(ex.map(lambda _: m.force("noop"), range(n)))
    forced = time.monotonic() - t0
    timeline = []

    def done():
        k = len(m.builds("noop", after=before))
        timeline.append((time.monotonic() - t0, k))
        return k >= n
    adaptive_wait(done, max(600, n * 2), f"{n} noop builds", t0)
    secs = time.monotonic() - t0
    cpu = cpu_s(m.pid) - c0
    return {"elapsed_s": secs, "force_s": forced, "builds_per_s": n / secs, "master_cpu_s": cpu,
            "cpu_ms_per_build": cpu * 1000 / n, "timeline": timeline}


def w2(m, workers, scale):
    out = {}
    base = workers.basedirs["w0"]
    for size in scale["w2_sizes"]:
        builder = f"log-{size}"
        marker = base / builder / "start.marker"
        marker.unlink(missing_ok=True)
        time.sleep(1)
        rss0 = rss_kb(m.pid)
        hwm_ok = hwm_reset(m.pid)
        sampler = RssSampler(m.pid)
        t_force = time.monotonic()
        m.force(builder)
        builds = adaptive_wait(lambda: m.builds(builder), max(900, size / MB * 2), f"the {builder} build", t_force)
        t_done_wall = time.time()
        peak = sampler.stop()
        hwm = hwm_kb(m.pid) if hwm_ok else None
        b = builds[0]
        if b.get("results") != 0:
            raise RuntimeError(f"{builder} build {b['buildid']} ended with results {b.get('results')}")
        start = float(marker.read_text().strip())
        e2e = t_done_wall - start
        steps = m.api(f"builds/{b['buildid']}/steps")["steps"]
        step = [s for s in steps if s["name"] == "produce"][0]
        logs = m.api(f"steps/{step['stepid']}/logs")["logs"]
        stdio = [lg for lg in logs if lg.get("slug", lg.get("name")) == "stdio"][0]
        # raw download
        t0 = time.monotonic()
        got = 0
        with urllib.request.urlopen(f"{m.url}/api/v2/logs/{stdio['logid']}/raw", timeout=3600) as r:
            status = r.status
            while True:
                chunk = r.read(1 << 20)
                if not chunk:
                    break
                got += len(chunk)
        dl = time.monotonic() - t0
        if status != 200 or got < size:
            raise RuntimeError(f"raw log download of {builder}: HTTP {status}, {got} bytes < {size}")
        grow_kb = max((hwm if hwm is not None else 0), peak or 0) - rss0
        out[str(size)] = {
            "bytes": size, "e2e_s": e2e, "e2e_mb_s": size / MB / e2e, "rss_before_kb": rss0, "peak_rss_kb": peak,
            "hwm_kb": hwm, "rss_growth_kb": grow_kb, "download_bytes": got, "download_s": dl,
            "download_mb_s": got / MB / dl, "num_lines": stdio.get("num_lines"),
            "rss_series": [(round(t, 3), kb) for t, kb in sampler.samples[:: max(1, len(sampler.samples) // 400)]],
        }
        log(f"  W2 {m.system} {size / MB:g} MB: {size / MB / e2e:.1f} MB/s e2e, RSS +{grow_kb / 1024:.1f} MB, "
            f"download {got / MB / dl:.1f} MB/s")
    return out


def w3(system, args, scale, kiln_worker, swarm_bin, use_swarm=None):
    """Idle workers: the swarm on Kiln; real kiln-worker processes on Buildbot (or, with
    use_swarm, the swarm on Buildbot too: the same client on both masters)."""
    if use_swarm is None:
        use_swarm = system.name == "kiln"
    n = scale["w3_kiln"] if system.name == "kiln" else scale["w3_buildbot_swarm" if use_swarm else "w3_buildbot"]
    m = system.start("w3-swarm" if use_swarm else "w3", n, [])
    workers = swarm = None
    try:
        # Buildbot registers configured workers after its web port is up, and times out
        # every WebSocket handshake (5 s) while it does: wait until all n are listed.
        wait_for(lambda: len(m.api("workers")["workers"]) >= n, 900, f"{n} configured workers listed", interval=1)
        time.sleep(3)
        rss0 = rss_kb(m.pid)
        t0 = time.monotonic()
        if use_swarm:
            # several loopback source addresses: 10,000 connections plus TIME_WAITs of earlier runs
            swarm_out = open(m.dir / "swarm.out", "w")
            # Buildbot times out WebSocket handshakes after 5 s and serves them one at a time:
            # a storm of 128 concurrent ones never finishes there, so it gets a trickle.
            conc, retries = ("256", "3") if system.name == "kiln" else ("8", "10")
            swarm = subprocess.Popen([str(swarm_bin), "--master", f"127.0.0.1:{m.worker_port}", "--count", str(n),
                                      "--password", PASSWORD, "--source-ips", "4", "--quiet-ms", "3000",
                                      "--concurrency", conc, "--retries", retries, "--ready-timeout", "1200"],
                                     stdout=subprocess.PIPE, stderr=swarm_out, text=True, start_new_session=True)
            ready = None
            for line in swarm.stdout:
                if line.startswith("READY "):
                    ready = json.loads(line[6:])
                    break
                if line.startswith("FAILED "):
                    raise RuntimeError(f"kiln-swarm: {line.strip()}")
            if ready is None:
                raise RuntimeError(f"kiln-swarm exited {swarm.wait()} before READY")
            threading.Thread(target=lambda: [None for _ in swarm.stdout], daemon=True).start()
            wait_connected(m, n, timeout=120)
        else:
            workers = KilnWorkers(kiln_worker, m, n)
            wait_connected(m, n, workers, timeout=600)
            time.sleep(3)
        attach_s = time.monotonic() - t0
        time.sleep(2)
        rss1 = rss_kb(m.pid)
        connected = m.connected_workers()
        if connected < n:
            raise RuntimeError(f"only {connected}/{n} workers connected at measurement time")
        return {"workers": n, "kind": "kiln-swarm" if swarm else "kiln-worker", "rss_before_kb": rss0,
                "rss_after_kb": rss1, "kib_per_worker": (rss1 - rss0) / n, "attach_s": attach_s}
    finally:
        if swarm:
            stop_proc(swarm, grace=5)
        if workers:
            workers.stop()
        m.stop()
        m.drop_database()


def w5(system, args, scale):
    runs = scale["w5_runs"]
    m = system.start("w5", 8, [])   # creates the directory and database; this run is not counted
    prepared = m.prepared
    m.stop()
    startups, rsss = [], []
    for _ in range(runs):
        m = system.start("w5", 8, [], prepared=prepared)
        try:
            time.sleep(2)
            startups.append(m.startup_s)
            rsss.append(rss_kb(m.pid))
        finally:
            m.stop()
    return {"runs": runs, "startup_ms": [s * 1000 for s in startups], "startup_ms_median": statistics.median(startups) * 1000,
            "idle_rss_kb": rsss, "idle_rss_kb_median": statistics.median(rsss)}


# --- report -------------------------------------------------------------------------------------

def figures(report, scale):
    """Rows: (workload, figure, kiln, buildbot, ratio, target text, met)."""
    s = report["systems"]
    k, b = s.get("kiln", {}), s.get("buildbot", {})
    small, large = (str(x) for x in scale["w2_sizes"])
    sz = {small: f"{int(small) / MB:g} MB", large: f"{int(large) / MB:g} MB"}

    def get(r, *path):
        for p in path:
            if not isinstance(r, dict):
                return None
            r = r.get(p)
        return r

    def kb_mb(v):
        return None if v is None else v * 1024 / MB

    rows = []

    def row(wl, fig, kv, bv, kind, thr, unit=""):
        ratio = kv / bv if isinstance(kv, (int, float)) and isinstance(bv, (int, float)) and bv else None
        if kind == "ratio>=":
            target, met = f"≥ {thr:g}× Buildbot", None if ratio is None else ratio >= thr
        elif kind == "ratio<=":
            target, met = f"≤ 1/{1 / thr:g} of Buildbot", None if ratio is None else ratio <= thr
        else:
            target, met = f"≤ {thr:g} {unit}", None if kv is None else kv <= thr
        rows.append({"workload": wl, "figure": fig, "kiln": kv, "buildbot": bv, "ratio": ratio, "target": target, "met": met})

    row("W1", f"builds/s ({scale['w1_builds']} × `true`, 8 workers, median of {scale['w1_rounds']})", get(k, "w1", "builds_per_s"), get(b, "w1", "builds_per_s"), "ratio>=", 100)
    row("W1", "master CPU ms per build", get(k, "w1", "cpu_ms_per_build"), get(b, "w1", "cpu_ms_per_build"), "ratio<=", 1 / 50)
    for key in (small, large):
        row("W2", f"end-to-end MB/s, {sz[key]} log", get(k, "w1", "w2", key, "e2e_mb_s"), get(b, "w1", "w2", key, "e2e_mb_s"), "ratio>=", 40)
    row("W2", f"master RSS growth MB, {sz[large]} log", kb_mb(get(k, "w1", "w2", large, "rss_growth_kb")),
        kb_mb(get(b, "w1", "w2", large, "rss_growth_kb")), "abs<=", 32, "MB")
    for key in (small, large):
        row("W2", f"raw log download MB/s, {sz[key]}", get(k, "w1", "w2", key, "download_mb_s"), get(b, "w1", "w2", key, "download_mb_s"), "ratio>=", 50)
    row("W3", f"master KiB per idle worker (Kiln {get(k, 'w3', 'workers') or scale['w3_kiln']}, "
        f"Buildbot {get(b, 'w3', 'workers') or scale['w3_buildbot']})",
        get(k, "w3", "kib_per_worker"), get(b, "w3", "kib_per_worker"), "abs<=", 16, "KiB")
    row("W3", f"… same client on both: kiln-swarm (Kiln {get(k, 'w3', 'workers') or scale['w3_kiln']}, "
        f"Buildbot {get(b, 'w3_swarm', 'workers') or scale['w3_buildbot_swarm']})",
        get(k, "w3", "kib_per_worker"), get(b, "w3_swarm", "kib_per_worker"), "abs<=", 16, "KiB")
    row("W5", "start-up ms (spawn → 200 on /api/v2/builders)", get(k, "w5", "startup_ms_median"), get(b, "w5", "startup_ms_median"), "abs<=", 50, "ms")
    row("W5", "idle RSS MB after start", kb_mb(get(k, "w5", "idle_rss_kb_median")), kb_mb(get(b, "w5", "idle_rss_kb_median")), "abs<=", 20, "MB")
    return rows


def fmt(v):
    if v is None:
        return "missing"
    if isinstance(v, float):
        if abs(v) >= 100:
            return f"{v:,.0f}"
        if abs(v) >= 1:
            return f"{v:.2f}"
        return f"{v:.3g}"
    return str(v)


def table_lines(rows):
    head = ["workload", "figure", "Kiln", "Buildbot", "ratio", "target", "met?"]
    body = [[r["workload"], r["figure"], fmt(r["kiln"]), fmt(r["buildbot"]),
             "-" if r["ratio"] is None else f"{r['ratio']:.3g}×", r["target"],
             {True: "yes", False: "NO", None: "-"}[r["met"]]] for r in rows]
    return head, body


def print_table(rows):
    head, body = table_lines(rows)
    w = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]
    print()
    for line in [head] + body:
        print("  ".join(c.ljust(w[i]) for i, c in enumerate(line)))
    print()


def plots(report, scale_name, rows):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("WARNING: matplotlib is not installed (run bench/run, which makes bench/.venv): no plots")
        return []
    PLOTS.mkdir(parents=True, exist_ok=True)
    out = []
    colors = {"kiln": "#d9480f", "buildbot": "#1c7ed6"}
    # 1. every figure, Kiln vs Buildbot (log scale)
    fig, axes = plt.subplots(2, (len(rows) + 1) // 2, figsize=(3.2 * ((len(rows) + 1) // 2), 6.5))
    for ax, r in zip(axes.flat, rows):
        vals = [r["kiln"] or 0, r["buildbot"] or 0]
        ax.bar(["Kiln", "Buildbot"], vals, color=[colors["kiln"], colors["buildbot"]])
        if all(v > 0 for v in vals):
            ax.set_yscale("log")
        ax.set_title(f"{r['workload']}: {r['figure']}", fontsize=7, wrap=True)
        ax.tick_params(labelsize=7)
        for i, v in enumerate([r["kiln"], r["buildbot"]]):
            ax.text(i, vals[i] or 0, fmt(v), ha="center", va="bottom", fontsize=7)
    for ax in list(axes.flat)[len(rows):]:
        ax.axis("off")
    fig.suptitle(f"Kiln vs Buildbot 4.3.0 master, {scale_name} scale", fontsize=10)
    fig.tight_layout()
    p = PLOTS / f"master-{scale_name}-figures.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    out.append(p)
    # 2. W2: master RSS during the large log
    large = str(SCALES[scale_name]["w2_sizes"][-1])
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for name in SYSTEMS:
        series = (((report["systems"].get(name) or {}).get("w1") or {}).get("w2") or {}).get(large, {}).get("rss_series")
        if series:
            ax.plot([t for t, _ in series], [kb * 1024 / MB for _, kb in series], label=name, color=colors[name])
    ax.set_xlabel("seconds since the build was forced")
    ax.set_ylabel("master RSS (MB)")
    ax.set_title(f"W2: master RSS while a {int(large) / MB:g} MB log streams in")
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    p = PLOTS / f"master-{scale_name}-w2-rss.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    out.append(p)
    # 3. W1: builds completed over time
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for name in SYSTEMS:
        tl = ((report["systems"].get(name) or {}).get("w1") or {}).get("timeline")
        if tl:
            ax.plot([t for t, _ in tl], [k for _, k in tl], label=name, color=colors[name])
    ax.set_xlabel("seconds since the first force")
    ax.set_ylabel("builds complete")
    ax.set_title("W1: builds of `true` completed over time")
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    p = PLOTS / f"master-{scale_name}-w1-timeline.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    out.append(p)
    return out


def write_report_md(report, rows, pngs):
    head, body = table_lines(rows)
    md = [f"# Master benchmarks: Kiln vs Buildbot {report.get('buildbot_version') or '4.3.0'}", "",
          f"Scale **{report['scale']}**, {report['date']}, commit `{report.get('git_commit')}`, "
          f"{report['host']['cpu']} ({report['host']['cpus']} CPUs), load average "
          f"{report['load_avg_before']:.2f} before / {report['load_avg_after']:.2f} after.",
          "Produced by `bench/run --scale " + report["scale"] + "`; raw figures in "
          f"`bench/results/master-{report['scale']}.json`; method in `bench/README.md`.", "",
          "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    if report.get("merged_with"):
        runs = "; ".join(f"{mw['date']} (commit `{(mw['git_commit'] or '?')[:12]}`, load average "
                         f"{mw['load_avg_before']:.2f} / {mw['load_avg_after']:.2f})" for mw in report["merged_with"])
        md[4:4] = [f"Figures not re-measured in this run (`--merge`) come from earlier runs: {runs}; "
                   "each workload's own start time and load average are in the JSON (`measured`).", ""]
    md += ["| " + " | ".join(c.replace("|", "\\|") for c in line) + " |" for line in body]
    md.append("")
    if report.get("errors"):
        md += ["Failures in this run:", ""] + [f"- {k}: {v}" for k, v in report["errors"].items()] + [""]
    md.append("MB = 10^6 bytes; KiB = 1024 bytes. Targets are reported, not asserted.")
    md.append("")
    for p in pngs:
        md += [f"![{p.stem}]({p.relative_to(ROOT / 'bench')})", ""]
    (ROOT / "bench" / "REPORT.md").write_text("\n".join(md))


def git_commit():
    try:
        r = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        d = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no", "--", ".",
                            ":(exclude)bench/results", ":(exclude)bench/REPORT.md"], capture_output=True, text=True, timeout=10)
        head = r.stdout.strip() or None
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
    ap.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset of: kiln, buildbot")
    ap.add_argument("--workloads", default="w1,w3,w5", help="comma-separated subset of w1 (includes w2), w3, w5")
    ap.add_argument("--merge", action="store_true",
                    help="keep the other systems'/workloads' figures of the existing results file")
    ap.add_argument("--target-dir", type=Path, default=Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")))
    ap.add_argument("--report-only", action="store_true",
                    help="re-render the table, plots and REPORT.md from the existing results file")
    ap.add_argument("--keep-work", action="store_true", help="keep the masters' SQLite databases")
    args = ap.parse_args()
    global KEEP_WORK
    KEEP_WORK = args.keep_work
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if any(s not in SYSTEMS for s in systems) or not systems:
        ap.error(f"--systems: choose from {SYSTEMS}")
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    scale = SCALES[args.scale]
    if args.report_only:
        report = json.loads((RESULTS / f"master-{args.scale}.json").read_text())
        rows = figures(report, scale)
        print_table(rows)
        write_report_md(report, rows, plots(report, args.scale, rows))
        return 0 if report.get("ok") else 1
    venv = Path(os.environ.get("KILN_INTEROP_VENV", "/tmp/bbvenv"))
    rel = args.target_dir / "release"
    kiln_worker, swarm_bin = rel / "kiln-worker", rel / "kiln-swarm"
    kiln_bin = Path(os.environ.get("KILN_BIN", rel / "kiln"))
    needed = ([kiln_worker] if {"w1", "w3"} & set(workloads) else []) + ([swarm_bin] if "w3" in workloads else [])
    for b in needed:
        if not b.exists():
            sys.exit(f"{b} is missing: build it (bench/run does: cargo build --release -p kiln-worker -p kiln-testkit)")

    # Every worker connection is a file descriptor in the master and in the swarm.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    WORK.mkdir(parents=True, exist_ok=True)

    report = {"benchmark": "master", "scale": args.scale, "params": scale,
              "date": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
              "git_commit": git_commit(), "load_avg_before": os.getloadavg()[0],
              "host": {"cpu": cpu_model(), "cpus": os.cpu_count(), "kernel": platform.release(),
                       "nofile": hard, "python": platform.python_version()},
              "systems": {}, "errors": {}}
    try:
        r = subprocess.run([str(venv / "bin" / "python"), "-c", "import buildbot; print(buildbot.version)"],
                           capture_output=True, text=True, timeout=60)
        report["buildbot_version"] = r.stdout.strip() or None
    except OSError:
        report["buildbot_version"] = None

    out = RESULTS / f"master-{args.scale}.json"
    if args.merge and out.exists():
        old = json.loads(out.read_text())
        wl_of = {"w1": "w1", "w3": "w3", "w3_swarm": "w3", "w5": "w5"}
        for name, res in old.get("systems", {}).items():
            report["systems"][name] = {k: v for k, v in res.items()
                                       if not (name in systems and wl_of.get(k) in workloads)}
        report["errors"] = {k: v for k, v in old.get("errors", {}).items()
                            if not (k.split(".")[0] in systems and (k.count(".") == 0 or k.split(".")[1] in workloads))}
        # every earlier run some kept figure may come from, oldest first
        report["merged_with"] = old.get("merged_with", []) + [
            {"date": old.get("date"), "git_commit": old.get("git_commit"), "systems": sorted(old.get("systems", {})),
             "load_avg_before": old.get("load_avg_before"), "load_avg_after": old.get("load_avg_after")}]
    impls = {}
    if "buildbot" in systems:
        if not (venv / "bin" / "buildbot").exists():
            report["errors"]["buildbot"] = f"no buildbot in {venv} (set KILN_INTEROP_VENV)"
        else:
            impls["buildbot"] = Buildbot(args, venv)
    if "kiln" in systems:
        ok = kiln_bin.exists()
        if ok:
            ok = any(subprocess.run([str(kiln_bin), a], capture_output=True, timeout=30).returncode == 0
                     for a in ("--version", "--help"))
        if ok:
            impls["kiln"] = Kiln(args, kiln_bin)
        else:
            report["errors"]["kiln"] = (f"{kiln_bin} is missing or not usable (`kiln --version` and `--help` failed): "
                                        "every Kiln figure is missing")
            report["systems"]["kiln"] = {}
    # Buildbot first: it works today and is the reference.
    for name in ("buildbot", "kiln"):
        if name not in impls:
            continue
        sysres = report["systems"].setdefault(name, {})
        for wl in workloads:
            log(f"{name}: {wl.upper()}{' + W2' if wl == 'w1' else ''}")
            measured = {"date": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
                        "load_avg_1m": os.getloadavg()[0]}
            try:
                if wl == "w1":
                    sysres["w1"] = w1(impls[name], args, scale, kiln_worker)
                    log(f"  W1 {name}: {sysres['w1']['builds_per_s']:.2f} builds/s, "
                        f"{sysres['w1']['cpu_ms_per_build']:.2f} ms CPU/build")
                elif wl == "w3":
                    sysres["w3"] = w3(impls[name], args, scale, kiln_worker, swarm_bin)
                    log(f"  W3 {name}: {sysres['w3']['kib_per_worker']:.1f} KiB per worker")
                    if name == "buildbot":
                        sysres["w3_swarm"] = w3(impls[name], args, scale, kiln_worker, swarm_bin, use_swarm=True)
                        log(f"  W3 {name} (kiln-swarm): {sysres['w3_swarm']['kib_per_worker']:.1f} KiB per worker")
                elif wl == "w5":
                    sysres["w5"] = w5(impls[name], args, scale)
                    log(f"  W5 {name}: start-up {sysres['w5']['startup_ms_median']:.0f} ms, "
                        f"idle RSS {sysres['w5']['idle_rss_kb_median'] / 1024:.1f} MiB")
                for k in ("w1", "w3", "w3_swarm", "w5"):
                    if k.split("_")[0] == wl and isinstance(sysres.get(k), dict):
                        sysres[k]["measured"] = measured
            except Exception as e:  # noqa: BLE001 - a failed workload is reported, the others still run
                report["errors"][f"{name}.{wl}"] = str(e)
                log(f"  {name} {wl} FAILED: {e}")
    report["load_avg_after"] = os.getloadavg()[0]
    rows = figures(report, scale)
    report["table"] = rows
    selected = {"W1": "w1", "W2": "w1", "W3": "w3", "W5": "w5"}
    missing = [f"{r['workload']} {r['figure']} ({s})" for r in rows for s in systems
               if selected[r["workload"]] in workloads and r[s] is None]
    report["missing"] = missing
    report["ok"] = not missing and not report["errors"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print_table(rows)
    pngs = plots(report, args.scale, rows)
    write_report_md(report, rows, pngs)
    log(f"wrote {out.relative_to(ROOT)}, bench/REPORT.md and {len(pngs)} plots")
    if not report["ok"]:
        for k, v in report["errors"].items():
            log(f"FAILED {k}: {v}")
        if missing:
            log(f"missing figures: {len(missing)} (e.g. {missing[0]})")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
