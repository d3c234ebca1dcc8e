#!/usr/bin/env python3
"""What a hostile client costs the master: Kiln (`kiln run`) against Buildbot 4.3.0, same run.

    bench/run hostile --scale smoke|full [--systems kiln,buildbot] [--probes log,logins,stall]

Probes (each on a fresh master, the figures beside their targets):
  log     one build prints a big log (full: 2 GB on Kiln, 300 MB on Buildbot, which stores
          ~5 MB/s; smoke: 50 MB on both) through a kiln-worker; then one client asks for the
          whole log at once, `GET /api/v2/logs/{id}/contents` with no limit. Figure: master
          RSS growth (VmRSS every 5 ms and VmHWM) over the RSS before the request.
  logins  N failed worker logins (full 3,000, smoke 300), each a WebSocket handshake on the
          worker port with `Authorization: Basic base64(NAME:wrong)` and a 200 KB NAME, a few
          dozen at a time from many loopback addresses. Figures: master RSS growth (after,
          and the peak), and the bytes its log files grew by.
  stall   N connections to the web port (full 10,000, smoke 1,000) from many source
          addresses in 127/8, each sending half a request and holding; then `GET /health`
          (Buildbot has none: `/api/v2/builders`) from another client, several times.
          Figures: the median and max latency, and when the master closed the stalled ones.

Every wait has a timeout; a probe that fails records why in `errors` and its figures are
missing. A figure that hit a bound (a request that timed out, a master that passed the RSS
ceiling and was stopped) is reported as that bound with `lower_bound: true`, never as a
success. Writes bench/results/hostile-<scale>.json and (full scale) bench/hostile/REPORT.md.
The exit status is non-zero when a probe failed or a figure is missing; targets are
reported, never asserted. Python 3 standard library only.
"""

import argparse
import base64
import concurrent.futures
import datetime
import errno
import http.client
import importlib.util
import json
import os
import platform
import re
import resource
import selectors
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
RESULTS = ROOT / "bench" / "results"
MB = 1_000_000

# The master benchmark's helpers (/proc readers, both masters, kiln-worker processes).
_spec = importlib.util.spec_from_file_location("master_bench", ROOT / "bench" / "master" / "run.py")
mb = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mb)
mb.WORK = ROOT / "bench" / "work" / "hostile"

SCALES = {
    "smoke": {"log_bytes": {"kiln": 50 * MB, "buildbot": 50 * MB}, "logins": 300, "stall": 1000,
              "stall_watch_s": 15},
    "full": {"log_bytes": {"kiln": 2000 * MB, "buildbot": 300 * MB}, "logins": 3000, "stall": 10_000,
             "stall_watch_s": 70},
}
SYSTEMS = ("kiln", "buildbot")
PROBES = ("log", "logins", "stall")
NAME_BYTES = 200_000
LOGIN_CONCURRENCY = 32
HEALTH_SAMPLES = 7
# Loopback addresses the hostile clients come from: all of 127/8 is loopback, and spreading
# over many keeps a per-address cap from refusing them before they cost anything.
PER_SOURCE = 64


def log(msg):
    print(f"[bench-hostile {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def source_ip(i):
    """The i-th client address, 127.1.0.1 upwards (127.0.0.1 stays the honest client's)."""
    return f"127.1.{i // 250}.{i % 250 + 1}"


def own_rss_kb(pid, field="VmRSS"):
    """VmRSS (or VmHWM) of the master process itself, in KiB; None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def log_bytes(dir):
    """(bytes of the master's captured stdout/stderr, bytes in its log files). A Kiln master
    in the foreground writes its log to both, and its `kiln.log*` rotate away at 10 × 10 MB;
    Buildbot writes only `twistd.log*`. So the log stream written is the larger growth of
    the two, counted once."""
    out = files = 0
    for f in dir.iterdir():
        if not f.is_file():
            continue
        if f.name == "master.out":
            out += f.stat().st_size
        elif ".log" in f.name:
            files += f.stat().st_size
    return out, files


def log_growth(before, after):
    return max(after[0] - before[0], after[1] - before[1])


class Sampler:
    """VmRSS of one process every `interval` s; stops the process when it passes
    `ceiling_kb`, so a master that would take the machine's memory is measured as
    "at least the ceiling" instead."""

    def __init__(self, pid, ceiling_kb, interval=0.005):
        self.pid, self.ceiling_kb, self.interval = pid, ceiling_kb, interval
        self.peak_kb, self.samples, self.hit_ceiling = 0, [], False
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            kb = own_rss_kb(self.pid)
            if kb is None:
                return
            self.peak_kb = max(self.peak_kb, kb)
            self.samples.append((round(time.monotonic() - self._t0, 3), kb))
            if kb >= self.ceiling_kb:
                self.hit_ceiling = True
                try:
                    os.kill(self.pid, 9)
                except ProcessLookupError:
                    pass
                return
            self._stop.wait(self.interval)

    def stop(self):
        self._stop.set()
        self._thread.join(5)
        return self.peak_kb


# --- the masters -------------------------------------------------------------------------------

class HostileKiln(mb.Kiln):
    """The benchmark farm, with the log cap off (the probe needs the whole big log stored)
    and Kiln's default logging (what it writes for each failed login is measured)."""

    def prepare(self, dir, nworkers, log_sizes):
        web, wport, env = super().prepare(dir, nworkers, log_sizes)
        star = (dir / "master.star").read_text()
        # Append the setting to the one `MASTER = master(...)` line, whatever it holds.
        star, n = re.subn(r"^(MASTER = master\(.*)\)$", r"\1, log_max_bytes = 0)", star,
                          count=1, flags=re.M)
        if n != 1:
            raise RuntimeError("bench/master/run.py's master() line changed: cannot turn the log cap off")
        (dir / "master.star").write_text(star)
        env.pop("RUST_LOG", None)
        return web, wport, env


def health_path(system):
    return "/health" if system == "kiln" else "/api/v2/builders"


# --- probe: the whole of a big log at once ------------------------------------------------------

def probe_log(system, args, scale, kiln_worker):
    size = scale["log_bytes"][system.name]
    m = system.start("log", 1, [size])
    workers = None
    try:
        workers = mb.KilnWorkers(kiln_worker, m, 1)
        mb.wait_connected(m, 1, workers, timeout=120)
        builder = f"log-{size}"
        t0 = time.monotonic()
        m.force(builder)
        builds = mb.adaptive_wait(lambda: alive(m) and m.builds(builder), max(900, size / MB * 2), f"the {builder} build", t0)
        build_s = time.monotonic() - t0
        b = builds[0]
        if b.get("results") != 0:
            raise RuntimeError(f"{builder} build {b['buildid']} ended with results {b.get('results')}")
        steps = m.api(f"builds/{b['buildid']}/steps")["steps"]
        step = [s for s in steps if s["name"] == "produce"][0]
        logs = m.api(f"steps/{step['stepid']}/logs")["logs"]
        stdio = [lg for lg in logs if lg.get("slug", lg.get("name")) == "stdio"][0]
        # 100-byte lines: a log stored short (capped) would make the figure a smaller log's.
        if (stdio.get("num_lines") or 0) < size // 100:
            raise RuntimeError(f"the stored log has {stdio.get('num_lines')} lines, not {size // 100}: the master cut it")
        time.sleep(2)
        out = {"log_bytes": size, "build_s": build_s, "logid": stdio["logid"], "num_lines": stdio.get("num_lines")}
        out.update(whole_log_request(m, stdio["logid"], args))
        log(f"  log {m.system}: {size / MB:g} MB log, contents: HTTP {out['status']}, {out['body_bytes'] / MB:.1f} MB "
            f"in {out['request_s']:.1f} s, RSS +{out['rss_growth_mb']:.1f} MB"
            f"{' (hit the ceiling)' if out['lower_bound'] else ''}")
        return out
    finally:
        if workers:
            workers.stop()
        m.stop()
        drop_work(m)


def drop_work(m):
    """The master's database, and any log file over 50 MB (Kiln logs each failed login's
    200 KB name today: 600 MB for the full probe), unless --keep-work."""
    m.drop_database()
    if not mb.KEEP_WORK:
        for f in m.dir.rglob("*"):
            if f.is_file() and f.stat().st_size > 50 * MB:
                f.unlink(missing_ok=True)


def alive(m):
    if m.proc.poll() is not None:
        raise RuntimeError(f"the {m.system} master exited {m.proc.returncode}: {m.log_text()}")
    return True


def whole_log_request(m, logid, args):
    """GET /api/v2/logs/{id}/contents with no limit, read to the end and thrown away, while
    the master's RSS is sampled."""
    rss0 = own_rss_kb(m.pid)
    hwm_ok = mb.hwm_reset(m.pid)
    sampler = Sampler(m.pid, args.rss_ceiling_mb * MB // 1024)
    t0 = time.monotonic()
    status, got, error = None, 0, None
    try:
        conn = http.client.HTTPConnection("127.0.0.1", m.web_port, timeout=args.request_timeout)
        conn.request("GET", f"/api/v2/logs/{logid}/contents")
        r = conn.getresponse()
        status = r.status
        while time.monotonic() - t0 < args.request_timeout:
            chunk = r.read(1 << 20)
            if not chunk:
                break
            got += len(chunk)
        else:
            error = f"not finished after {args.request_timeout} s"
        conn.close()
    except (OSError, http.client.HTTPException) as e:
        error = f"{type(e).__name__}: {e}"
    secs = time.monotonic() - t0
    peak = sampler.stop()
    hwm = own_rss_kb(m.pid, "VmHWM") if hwm_ok else None
    grow_kb = max(peak, hwm or 0) - rss0
    if sampler.hit_ceiling:
        error = f"the master passed the {args.rss_ceiling_mb} MB RSS ceiling and was stopped"
    elif error and m.proc.poll() is not None:
        raise RuntimeError(f"the {m.system} master died during the request ({error}): {m.log_text()}")
    return {"status": status, "body_bytes": got, "request_s": secs, "rss_before_kb": rss0, "peak_rss_kb": peak,
            "hwm_kb": hwm, "rss_growth_mb": grow_kb * 1024 / MB, "lower_bound": sampler.hit_ceiling,
            "request_error": error, "rss_series": sampler.samples[:: max(1, len(sampler.samples) // 400)]}


# --- probe: failed logins with huge names --------------------------------------------------------

def failed_login(port, i, deadline):
    """One WebSocket handshake with a 200 KB worker name and a wrong password; returns the
    HTTP status the master answered, or what happened instead."""
    if time.monotonic() > deadline:
        return "not tried (probe deadline)"
    name = f"{i:06d}" + "n" * (NAME_BYTES - 6)
    cred = base64.b64encode(f"{name}:wrong-password".encode()).decode()
    key = base64.b64encode(os.urandom(16)).decode()
    req = (f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nAuthorization: Basic {cred}\r\n\r\n").encode()
    s = socket.socket()
    s.settimeout(30)
    try:
        s.bind((source_ip(i // PER_SOURCE), 0))
        s.connect(("127.0.0.1", port))
        try:
            s.sendall(req)
        except OSError:
            pass  # refused part-way: read what the master said
        head = b""
        while b"\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                return "closed" if not head else "partial"
            head += chunk
        parts = head.split(b"\r\n", 1)[0].split()
        return parts[1].decode() if len(parts) > 1 else "garbled"
    except socket.timeout:
        return "timeout"
    except ConnectionResetError:
        return "reset"
    except OSError as e:
        return errno.errorcode.get(e.errno, "oserror")
    finally:
        s.close()


def probe_logins(system, args, scale):
    n = scale["logins"]
    m = system.start("logins", 1, [])
    try:
        time.sleep(2)
        rss0, logs0 = own_rss_kb(m.pid), log_bytes(m.dir)
        sampler = Sampler(m.pid, args.rss_ceiling_mb * MB // 1024, interval=0.02)
        t0 = time.monotonic()
        answers = {}
        with concurrent.futures.ThreadPoolExecutor(LOGIN_CONCURRENCY) as ex:
            # A master that holds each login for the whole 30 s socket timeout would make
            # the probe last hours: past the deadline the rest are counted as not tried.
            deadline = t0 + args.request_timeout
            for a in ex.map(lambda i: failed_login(m.worker_port, i, deadline), range(n)):
                answers[a] = answers.get(a, 0) + 1
        secs = time.monotonic() - t0
        time.sleep(2)
        peak = sampler.stop()
        if sampler.hit_ceiling:
            raise RuntimeError(f"the master passed the {args.rss_ceiling_mb} MB RSS ceiling and was stopped")
        alive(m)
        rss1, logs1 = own_rss_kb(m.pid), log_bytes(m.dir)
        accepted = answers.get("101", 0)
        if accepted:
            raise RuntimeError(f"{accepted} logins with a wrong password were accepted: {answers}")
        out = {"logins": n, "name_bytes": NAME_BYTES, "concurrency": LOGIN_CONCURRENCY, "elapsed_s": secs,
               "answers": answers, "rss_before_kb": rss0, "rss_after_kb": rss1, "peak_rss_kb": peak,
               "rss_growth_mb": (rss1 - rss0) * 1024 / MB, "peak_rss_growth_mb": (peak - rss0) * 1024 / MB,
               "log_bytes_written": log_growth(logs0, logs1)}
        log(f"  logins {m.system}: {n} in {secs:.1f} s, answers {answers}, RSS +{out['rss_growth_mb']:.1f} MB "
            f"(peak +{out['peak_rss_growth_mb']:.1f}), log +{out['log_bytes_written']:,} bytes")
        return out
    finally:
        m.stop()
        drop_work(m)


# --- probe: stalled half-sent requests, and /health --------------------------------------------

class Stalled:
    """N connections to `port`, each from one of many loopback addresses, each having sent
    half a request; opened with non-blocking connects, at most 256 in flight."""

    HALF = b"GET /api/v2/builders HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Stalled: "

    def __init__(self, port, n, timeout):
        self.socks, self.sent_at, self.failed = [], {}, {}
        sel = selectors.DefaultSelector()
        deadline = time.monotonic() + timeout
        next_i, pending = 0, 0
        while (next_i < n or pending) and time.monotonic() < deadline:
            while next_i < n and pending < 256:
                s = socket.socket()
                s.setblocking(False)
                try:
                    s.bind((source_ip(next_i // PER_SOURCE), 0))
                    s.connect_ex(("127.0.0.1", port))
                    sel.register(s, selectors.EVENT_WRITE)
                    pending += 1
                except OSError as e:
                    self._fail(s, e.errno)
                next_i += 1
            for key, _ in sel.select(0.1):
                s = key.fileobj
                sel.unregister(s)
                pending -= 1
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    self._fail(s, err)
                    continue
                try:
                    s.send(self.HALF)
                except OSError as e:
                    self._fail(s, e.errno)
                    continue
                self.socks.append(s)
                self.sent_at[s] = time.monotonic()
        for key in list(sel.get_map().values()):
            self._fail(key.fileobj, errno.ETIMEDOUT)
        sel.close()
        self.unopened = n - next_i

    def _fail(self, s, err):
        name = errno.errorcode.get(err, str(err))
        self.failed[name] = self.failed.get(name, 0) + 1
        s.close()

    def closed_by_master(self):
        """The held sockets the master has given up on since the last call (EOF, a reset,
        or any answer, e.g. a 408), each with how long after its half request."""
        now, closed = time.monotonic(), []
        for s in self.socks:
            if s.fileno() < 0:
                continue
            try:
                s.recv(1, socket.MSG_PEEK)
            except BlockingIOError:
                continue  # nothing yet: still held
            except OSError:
                pass
            closed.append(now - self.sent_at[s])
            s.close()
        return closed

    def close(self):
        for s in self.socks:
            s.close()


def timed_get(port, path, timeout):
    """Seconds for one GET from 127.0.0.1 to its whole answer, and the status; a timeout
    or an error gives (None, reason)."""
    t0 = time.monotonic()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        conn.request("GET", path)
        r = conn.getresponse()
        r.read()
        conn.close()
        return time.monotonic() - t0, r.status
    except (OSError, http.client.HTTPException) as e:
        return None, f"{type(e).__name__}: {e}"


def probe_stall(system, args, scale):
    n, watch = scale["stall"], scale["stall_watch_s"]
    m = system.start("stall", 1, [])
    held = None
    try:
        path = health_path(system.name)
        time.sleep(1)
        base, st = timed_get(m.web_port, path, 10)
        if base is None or st != 200:
            raise RuntimeError(f"GET {path} on the idle master answered {st}")
        t0 = time.monotonic()
        held = Stalled(m.web_port, n, timeout=120)
        open_s = time.monotonic() - t0
        closed = held.closed_by_master()
        closed_before_probe = len(closed)
        alive(m)
        samples, errors = [], []
        for _ in range(HEALTH_SAMPLES):
            secs, st = timed_get(m.web_port, path, args.health_timeout)
            if secs is None or st != 200:
                # an unanswered or refused probe counts as the whole timeout: the lower bound
                samples.append(args.health_timeout)
                errors.append(str(st))
            else:
                samples.append(secs)
            time.sleep(0.2)
        # How long the master lets a stalled request hold a connection.
        t_watch = time.monotonic()
        while time.monotonic() - t_watch < watch and len(closed) < len(held.socks):
            time.sleep(0.5)
            closed += held.closed_by_master()
        alive(m)
        out = {"connections": n, "opened": len(held.socks), "open_failed": held.failed, "unopened": held.unopened,
               "open_s": open_s, "closed_before_probe": closed_before_probe, "health_path": path, "idle_latency_s": base,
               "latency_s": samples, "median_s": statistics.median(samples), "max_s": max(samples),
               "health_failures": errors, "lower_bound": bool(errors), "health_timeout_s": args.health_timeout,
               "watched_s": watch, "closed_by_master": len(closed),
               "median_close_s": statistics.median(closed) if closed else None}
        log(f"  stall {m.system}: {len(held.socks)}/{n} held (failed: {held.failed}), {path} median "
            f"{out['median_s'] * 1000:.0f} ms, max {out['max_s'] * 1000:.0f} ms, {len(closed)} closed by the master "
            f"within {watch} s")
        return out
    finally:
        if held:
            held.close()
        m.stop()
        drop_work(m)


# --- report ------------------------------------------------------------------------------------

def figures(report, scale):
    """Rows: (probe, figure, kiln, buildbot, target, met, lower bounds)."""
    s = report["systems"]
    rows = []

    def get(sys, *path):
        r = s.get(sys) or {}
        for p in path:
            if not isinstance(r, dict):
                return None
            r = r.get(p)
        return r

    def row(probe, fig, key, thr, unit, bound_key="lower_bound", info=False):
        kv, bv = get("kiln", probe, key), get("buildbot", probe, key)
        rows.append({"probe": probe, "figure": fig, "kiln": kv, "buildbot": bv,
                     "kiln_lower_bound": bool(get("kiln", probe, bound_key)),
                     "buildbot_lower_bound": bool(get("buildbot", probe, bound_key)),
                     "target": "-" if info else f"≤ {thr:g} {unit}",
                     "target_max": None if info else thr, "unit": unit or None,
                     "met": None if info or kv is None else (kv <= thr and not get("kiln", probe, bound_key))})

    lk, lb = (f"{scale['log_bytes'][x] / MB:g} MB" for x in SYSTEMS)
    row("log", f"master RSS growth MB, whole `contents` of a big log (Kiln {lk}, Buildbot {lb})", "rss_growth_mb", 64, "MB")
    row("logins", f"master RSS growth MB after {scale['logins']:,} failed logins, 200 KB names", "rss_growth_mb", 16, "MB")
    row("logins", "… peak RSS growth MB during them", "peak_rss_growth_mb", 0, "", info=True)
    row("logins", "… master log bytes written", "log_bytes_written", 0, "", info=True)
    row("stall", f"`/health` median s, {scale['stall']:,} stalled half-sent requests (Buildbot: /api/v2/builders)", "median_s", 1, "s")
    row("stall", "… `/health` max s", "max_s", 1, "s")
    row("stall", "… stalled connections the master closed while watched", "closed_by_master", 0, "", info=True)
    return rows


def fmt(v, bound=False):
    return ("≥ " if bound and v is not None else "") + mb.fmt(v)


def table_lines(rows):
    head = ["probe", "figure", "Kiln", "Buildbot", "target", "met?"]
    body = [[r["probe"], r["figure"], fmt(r["kiln"], r["kiln_lower_bound"]), fmt(r["buildbot"], r["buildbot_lower_bound"]),
             r["target"], {True: "yes", False: "NO", None: "-"}[r["met"]]] for r in rows]
    return head, body


def print_table(rows):
    head, body = table_lines(rows)
    w = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]
    print()
    for line in [head] + body:
        print("  ".join(c.ljust(w[i]) for i, c in enumerate(line)))
    print()


def write_report_md(report, rows, path):
    head, body = table_lines(rows)
    md = [f"# What a hostile client costs the master: Kiln vs Buildbot {report.get('buildbot_version') or '4.3.0'}", "",
          f"Scale **{report['scale']}**, {report['date']}, commit `{report.get('git_commit')}`, "
          f"{report['host']['cpu']} ({report['host']['cpus']} CPUs), load average "
          f"{report['load_avg_before']:.2f} before / {report['load_avg_after']:.2f} after.",
          f"Produced by `bench/run hostile --scale {report['scale']}`; raw figures in "
          f"`bench/results/hostile-{report['scale']}.json`; method in `bench/README.md`.", "",
          "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    if report.get("merged_with"):
        runs = "; ".join(f"{r['date']} (commit `{(r['git_commit'] or '?')[:12]}`)" for r in report["merged_with"])
        md[4:4] = [f"Figures not re-measured in this run (`--merge`) come from earlier runs: {runs}; each "
                   "probe's load average and time are in the JSON."]
    md += ["| " + " | ".join(c.replace("|", "\\|") for c in line) + " |" for line in body]
    md.append("")
    if report.get("errors"):
        md += ["Failures in this run:", ""] + [f"- {k}: {v}" for k, v in report["errors"].items()] + [""]
    md += ["MB = 10^6 bytes. “≥” marks a bound the probe hit (a request that timed out, a master "
           "stopped at the RSS ceiling). Targets are reported, not asserted.", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(md))


def report_only(scale_name, scale):
    """--report-only: the table, the JSON's `table` and the report again from the results
    file (after a change to how rows are shown); nothing is measured."""
    out = RESULTS / f"hostile-{scale_name}.json"
    report = json.loads(out.read_text())
    report["table"] = rows = figures(report, scale)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print_table(rows)
    write_report_md(report, rows, HERE / "REPORT.md" if scale_name == "full" else mb.WORK / f"REPORT-{scale_name}.md")
    return 0 if report.get("ok") else 1


def merge_earlier(report, old, systems, probes):
    """--merge: the figures (and failures) of the probes not run now come from the earlier
    run, which `merged_with` names (date, commit, load) so the report can say so."""
    for name, res in old.get("systems", {}).items():
        kept = {p: v for p, v in res.items() if not (name in systems and p in probes)}
        if kept:
            report["systems"][name] = kept
    report["errors"] = {k: v for k, v in old.get("errors", {}).items()
                        if not (k.split(".")[0] in systems and k.split(".")[-1] in probes + ["buildbot", "kiln"])}
    report["merged_with"] = old.get("merged_with", []) + [
        {"date": old.get("date"), "git_commit": old.get("git_commit"), "load_avg_before": old.get("load_avg_before"),
         "load_avg_after": old.get("load_avg_after")}]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", choices=sorted(SCALES), default=os.environ.get("BENCH_SCALE", "smoke"))
    ap.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset of: kiln, buildbot")
    ap.add_argument("--probes", default=",".join(PROBES), help="comma-separated subset of: log, logins, stall")
    ap.add_argument("--target-dir", type=Path, default=Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")))
    ap.add_argument("--rss-ceiling-mb", type=int, default=6000,
                    help="stop a master whose RSS passes this (its figure is then reported as ≥ it)")
    ap.add_argument("--request-timeout", type=float, default=600, help="seconds for the whole-log request, and for all the failed logins")
    ap.add_argument("--health-timeout", type=float, default=10, help="seconds for one /health request")
    ap.add_argument("--keep-work", action="store_true", help="keep the masters' databases and big log files")
    ap.add_argument("--report-only", action="store_true",
                    help="re-render the table and the report from the existing results file")
    ap.add_argument("--merge", action="store_true",
                    help="keep the figures of the systems/probes not run now from the existing results file")
    args = ap.parse_args()
    mb.KEEP_WORK = args.keep_work
    systems = [x.strip() for x in args.systems.split(",") if x.strip()]
    probes = [x.strip() for x in args.probes.split(",") if x.strip()]
    if not systems or any(x not in SYSTEMS for x in systems):
        ap.error(f"--systems: choose from {SYSTEMS}")
    if not probes or any(x not in PROBES for x in probes):
        ap.error(f"--probes: choose from {PROBES}")
    scale = SCALES[args.scale]
    if args.report_only:
        return report_only(args.scale, scale)
    venv = Path(os.environ.get("KILN_INTEROP_VENV", "/tmp/bbvenv"))
    rel = args.target_dir / "release"
    kiln_worker = rel / "kiln-worker"
    kiln_bin = Path(os.environ.get("KILN_BIN", rel / "kiln"))
    for b in [kiln_worker] + ([kiln_bin] if "kiln" in systems else []):
        if not b.exists():
            sys.exit(f"{b} is missing: build it (bench/run does: cargo build --release -p kiln -p kiln-worker)")

    # The stalled connections are file descriptors here and in the master, which inherits this.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < scale["stall"] + 1000:
        log(f"WARNING: the open-files hard limit is {hard}: not every stalled connection can be opened")
    mb.WORK.mkdir(parents=True, exist_ok=True)

    report = {"benchmark": "hostile", "scale": args.scale, "params": scale,
              "date": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
              "git_commit": mb.git_commit(), "load_avg_before": os.getloadavg()[0],
              "host": {"cpu": mb.cpu_model(), "cpus": os.cpu_count(), "kernel": platform.release(),
                       "nofile": hard, "python": platform.python_version()},
              "notes": {"log": "Buildbot stores logs at ~5 MB/s, so at full scale its log is 300 MB, not 2 GB",
                        "stall": "Buildbot has no /health: its probe is GET /api/v2/builders"},
              "systems": {}, "errors": {}}
    try:
        r = subprocess.run([str(venv / "bin" / "python"), "-c", "import buildbot; print(buildbot.version)"],
                           capture_output=True, text=True, timeout=60)
        report["buildbot_version"] = r.stdout.strip() or None
    except OSError:
        report["buildbot_version"] = None
    out = RESULTS / f"hostile-{args.scale}.json"
    if args.merge and out.exists():
        merge_earlier(report, json.loads(out.read_text()), systems, probes)
    impls = {}
    if "buildbot" in systems:
        if (venv / "bin" / "buildbot").exists():
            impls["buildbot"] = mb.Buildbot(args, venv)
        else:
            report["errors"]["buildbot"] = f"no buildbot in {venv} (set KILN_INTEROP_VENV; interop/setup.sh makes it)"
    if "kiln" in systems:
        impls["kiln"] = HostileKiln(args, kiln_bin)
    for name in ("buildbot", "kiln"):
        if name not in impls:
            continue
        res = report["systems"].setdefault(name, {})
        for probe in probes:
            log(f"{name}: {probe}")
            try:
                if probe == "log":
                    res["log"] = probe_log(impls[name], args, scale, kiln_worker)
                elif probe == "logins":
                    res["logins"] = probe_logins(impls[name], args, scale)
                else:
                    res["stall"] = probe_stall(impls[name], args, scale)
                res[probe]["load_avg_1m"] = os.getloadavg()[0]
                res[probe]["measured_at"] = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
            except Exception as e:  # noqa: BLE001 - a failed probe is reported, the others still run
                report["errors"][f"{name}.{probe}"] = str(e)[:2000]
                log(f"  {name} {probe} FAILED: {e}")
    report["load_avg_after"] = os.getloadavg()[0]
    rows = figures(report, scale)
    report["table"] = rows
    measured = {(x, p) for x in SYSTEMS for p in PROBES if p in (report["systems"].get(x) or {})}
    missing = [f"{r['probe']}: {r['figure']} ({x})" for r in rows for x in systems
               if (r["probe"] in probes or (x, r["probe"]) in measured) and r[x] is None]
    report["missing"] = missing
    report["ok"] = not missing and not report["errors"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print_table(rows)
    md = HERE / "REPORT.md" if args.scale == "full" else mb.WORK / f"REPORT-{args.scale}.md"
    write_report_md(report, rows, md)
    log(f"wrote {out.relative_to(ROOT)} and {md.relative_to(ROOT)}")
    if not report["ok"]:
        for k, v in report["errors"].items():
            log(f"FAILED {k}: {v[:300]}")
        for x in missing:
            log(f"missing figure: {x}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
