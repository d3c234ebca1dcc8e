"""Drives a real Buildbot 4.3.0 master, stock `buildbot-worker`s and `kiln-worker`s.

Everything listens on 127.0.0.1 (the master.cfg patches the msgpack port to loopback).
Every process this module starts lives under one temporary root directory; `kill_strays`
ends whatever is left there (by pid) when a test is torn down.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MASTER_CFG = HERE / "master" / "master.cfg"
VENV_BIN = Path(sys.executable).parent   # the suite runs under the interop venv's python

PROTOCOL = "msgpack_experimental_v7"

# Buildbot result codes
SUCCESS, WARNINGS, FAILURE, SKIPPED, EXCEPTION, RETRY, CANCELLED = range(7)
RESULT_NAMES = ["SUCCESS", "WARNINGS", "FAILURE", "SKIPPED", "EXCEPTION", "RETRY", "CANCELLED"]

ALL_WORKERS = ("kiln", "stock")


def selected_workers() -> list[str]:
    """Workers under test: $KILN_INTEROP_WORKERS (comma separated), default both."""
    raw = os.environ.get("KILN_INTEROP_WORKERS", ",".join(ALL_WORKERS))
    names = [w.strip() for w in raw.split(",") if w.strip()]
    bad = [w for w in names if w not in ALL_WORKERS]
    if bad:
        raise ValueError(f"KILN_INTEROP_WORKERS: unknown worker(s) {bad}; use {ALL_WORKERS}")
    return names


def kiln_worker_bin() -> Path:
    return Path(os.environ.get("KILN_WORKER_BIN", REPO / "target" / "debug" / "kiln-worker")).resolve()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd, *, env=None, cwd=None, timeout=60, check=False) -> subprocess.CompletedProcess:
    cmd = [str(c) for c in cmd]
    p = subprocess.run(cmd, env=env, cwd=cwd, timeout=timeout, stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stdout}")
    return p


def tail(path: Path, n: int = 60) -> str:
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError as e:
        return f"<cannot read {path}: {e}>"
    return "\n".join(lines[-n:])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is as good as dead
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(pred, timeout: float, interval: float = 0.25, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def kill_strays(root: Path) -> list[str]:
    """SIGKILL (by pid) every process whose cwd is inside `root` (all of them were started by
    this suite: masters, workers, build commands), and the background `sleep 1000.<tag>…`
    processes of this run. Returns a description of what was killed."""
    root = str(Path(root).resolve())
    killed = []
    me = os.getpid()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == me:
            continue
        pid = int(d.name)
        try:
            cwd = os.readlink(d / "cwd")
        except OSError:
            continue
        if cwd == root or cwd.startswith(root + "/"):
            try:
                cmdline = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                os.kill(pid, signal.SIGKILL)
                killed.append(f"{pid} {cmdline.strip()}")
            except OSError:
                pass
    return killed


def kill_tagged_sleeps(tag: str) -> list[str]:
    """SIGKILL (by pid) the `sleep 1000.<tag>N` processes the background-process steps left."""
    killed = []
    pat = re.compile(rb"^sleep\x001000\." + re.escape(tag.encode()) + rb"\d*\x00$")
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmdline = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if pat.match(cmdline):
            try:
                os.kill(int(d.name), signal.SIGKILL)
                killed.append(f"{d.name} {cmdline!r}")
            except OSError:
                pass
    return killed


# ------------------------------------------------------------------------------------------
# REST model of a finished build
# ------------------------------------------------------------------------------------------

@dataclass
class Log:
    name: str
    type: str                      # 's' stream log, 't' text, 'h' html
    lines: list[tuple[str, str]]   # (stream, text); stream is 'o','e','h' for 's' logs, '' otherwise

    def stream(self, s: str) -> list[str]:
        return [t for st, t in self.lines if st == s]

    @property
    def stdout(self) -> list[str]:
        return self.stream("o")

    @property
    def stderr(self) -> list[str]:
        return self.stream("e")

    @property
    def header(self) -> list[str]:
        return self.stream("h")

    @property
    def text(self) -> list[str]:
        return [t for _, t in self.lines]


@dataclass
class Step:
    number: int
    name: str
    results: int | None
    state_string: str
    logs: dict[str, Log] = field(default_factory=dict)

    @property
    def stdio(self) -> Log:
        return self.logs.get("stdio") or Log("stdio", "s", [])

    @property
    def rcs(self) -> list[int]:
        """Exit codes as the master recorded them ('program finished with exit code N')."""
        out = []
        for h in self.stdio.header:
            m = re.fullmatch(r"program finished with exit code (-?\d+)", h)
            if m:
                out.append(int(m.group(1)))
        return out

    @property
    def signals(self) -> list[int]:
        return [int(m.group(1)) for h in self.stdio.header
                for m in [re.fullmatch(r"process killed by signal (\d+)", h)] if m]

    @property
    def kill_reasons(self) -> list[str]:
        """The worker's kill reasons (spec §8.3.3), reduced to their semantic part."""
        out = []
        for h in self.stdio.header:
            if m := re.match(r"command timed out: (\d+) seconds (elapsed|without output)", h):
                out.append(f"timeout {m.group(1)}s {m.group(2)}")
            elif m := re.match(r"command exceeds max lines: (\d+)/(\d+) written/allowed", h):
                out.append(f"max lines {m.group(1)}/{m.group(2)}")
            elif h.startswith("command interrupted"):
                out.append("interrupted")
        return out


@dataclass
class Build:
    buildid: int
    builder: str
    results: int | None
    state_string: str
    steps: list[Step]
    properties: dict = field(default_factory=dict)   # name -> (value, source)

    def step(self, name: str) -> Step:
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(f"build {self.buildid} ({self.builder}) has no step {name!r}; "
                       f"steps: {[s.name for s in self.steps]}")


# ------------------------------------------------------------------------------------------
# Master
# ------------------------------------------------------------------------------------------

class Master:
    def __init__(self, root: Path, *, passwords: dict[str, str] | None = None, run_tag: str = "4242"):
        self.root = Path(root)
        self.basedir = self.root / "master"
        self.msgpack_port = free_port()
        self.www_port = free_port()
        self.passwords = {"kiln": "kiln-pass", "stock": "stock-pass", **(passwords or {})}
        self.run_tag = run_tag
        self.env = dict(os.environ)
        self.env.update({
            "KILN_INTEROP_MSGPACK_PORT": str(self.msgpack_port),
            "KILN_INTEROP_WWW_PORT": str(self.www_port),
            "KILN_INTEROP_PASSWD_KILN": self.passwords["kiln"],
            "KILN_INTEROP_PASSWD_STOCK": self.passwords["stock"],
            "KILN_INTEROP_RUN_TAG": run_tag,
        })
        self.env.pop("PYTHONPATH", None)
        self.url = f"http://127.0.0.1:{self.www_port}"
        ACTIVE.append(self)

    # -- process control ----------------------------------------------------------------
    def create(self):
        self.root.mkdir(parents=True, exist_ok=True)
        run([VENV_BIN / "buildbot", "create-master", "-r", self.basedir], env=self.env, check=True,
            timeout=120)
        shutil.copy(MASTER_CFG, self.basedir / "master.cfg")

    def start(self, timeout: float = 90):
        p = run([VENV_BIN / "buildbot", "start", self.basedir], env=self.env, timeout=timeout)
        if p.returncode != 0:
            raise RuntimeError(f"buildbot start failed ({p.returncode}):\n{p.stdout}\n"
                               f"--- twistd.log ---\n{self.log_tail()}")
        wait_for(self._rest_up, 60, what="the master's REST API")

    def stop(self, timeout: float = 60):
        pid = self.pid()
        if pid is None:
            return
        run([VENV_BIN / "buildbot", "stop", self.basedir], env=self.env, timeout=timeout)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)

    def restart(self):
        """Stop and start again (same ports, same database)."""
        self.stop()
        wait_for(lambda: self.pid() is None or not pid_alive(self.pid()), 30, what="master exit")
        self.start()

    def pid(self) -> int | None:
        try:
            return int((self.basedir / "twistd.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    @property
    def log_path(self) -> Path:
        return self.basedir / "twistd.log"

    def log_tail(self, n: int = 80) -> str:
        return tail(self.log_path, n)

    # -- REST -----------------------------------------------------------------------------
    def _rest_up(self) -> bool:
        try:
            self.api("builders")
            return True
        except (OSError, urllib.error.URLError, ValueError):
            return False

    def api(self, path: str):
        with urllib.request.urlopen(f"{self.url}/api/v2/{path}", timeout=30) as r:
            return json.load(r)

    def rpc(self, path: str, method: str, params: dict):
        body = json.dumps({"jsonrpc": "2.0", "method": method, "id": 1, "params": params}).encode()
        req = urllib.request.Request(f"{self.url}/api/v2/{path}", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            res = json.load(r)
        if "error" in res:
            raise RuntimeError(f"JSON-RPC {method} on {path} failed: {res['error']}")
        return res["result"]

    def worker_id(self, name: str) -> int:
        return self.api(f"workers?name={name}")["workers"][0]["workerid"]

    def control_worker(self, name: str, action: str):
        """REST control of a worker: 'kill' (→ msgpack `shutdown`), 'stop' (graceful), ..."""
        return self.rpc(f"workers/{self.worker_id(name)}", action, {})

    def builder_id(self, name: str) -> int:
        for b in self.api(f"builders?name={name}")["builders"]:
            return b["builderid"]
        raise KeyError(f"no builder {name}")

    def worker_connected(self, name: str) -> bool:
        ws = self.api(f"workers?name={name}")["workers"]
        return bool(ws and ws[0]["connected_to"])

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(offset)
                return fh.read().decode(errors="replace")
        except OSError:
            return ""

    def wait_attached(self, name: str, builder: str | None = None, *, since: int = 0,
                      timeout: float = 60):
        """Waits until the master has fully attached worker `name` (its log says
        `Worker <name> attached to <builder>`, after byte offset `since` of twistd.log).
        Fails at once if the master logged that it cannot attach the worker."""
        builder = builder or f"{name}-quick"

        def ok():
            text = self._log_since(since)
            if f"worker {name} cannot attach" in text:
                lines = [ln for ln in text.splitlines()
                         if "cannot attach" in ln or "Failure" in ln or "failed" in ln.lower()]
                raise RuntimeError(f"the master could not attach worker {name}:\n"
                                   + "\n".join(lines[-6:]))
            return f"Worker {name} attached to {builder}" in text
        wait_for(ok, timeout, what=f"the master to attach worker {name} to {builder}")

    def force(self, builder: str) -> int:
        """Forces a build; returns the buildrequest id."""
        bid = self.builder_id(builder)
        result = self.rpc("forceschedulers/force", "force", {"builderid": str(bid)})
        return int(list(result[1].values())[0])

    def wait_build(self, brid: int, timeout: float = 300, start_timeout: float = 60) -> int:
        """Waits for the (single) build of buildrequest `brid` to complete; returns its id.
        Fails early when no build started within `start_timeout` (worker not attached)."""
        try:
            wait_for(lambda: self.api(f"builds?buildrequestid={brid}")["builds"], start_timeout,
                     interval=0.5, what=f"a build to start for build request {brid}")
        except TimeoutError as e:
            raise TimeoutError(f"{e}; is the worker attached? master log:\n{self.log_tail(15)}")

        def done():
            reqs = self.api(f"buildrequests/{brid}")["buildrequests"]
            if not reqs or not reqs[0]["complete"]:
                return None
            builds = self.api(f"builds?buildrequestid={brid}")["builds"]
            builds = [b for b in builds if b["complete"]]
            return builds[-1]["buildid"] if builds else None
        return wait_for(done, timeout, interval=1, what=f"build request {brid} to complete")

    def fetch_build(self, buildid: int) -> Build:
        b = self.api(f"builds/{buildid}")["builds"][0]
        builder = self.api(f"builders/{b['builderid']}")["builders"][0]["name"]
        steps = []
        for s in self.api(f"builds/{buildid}/steps")["steps"]:
            step = Step(s["number"], s["name"], s["results"], s["state_string"])
            for lg in self.api(f"steps/{s['stepid']}/logs")["logs"]:
                content = "".join(c["content"] for c in
                                  self.api(f"logs/{lg['logid']}/contents")["logchunks"])
                lines = content.split("\n")
                if lines and lines[-1] == "":
                    lines.pop()
                if lg["type"] == "s":
                    parsed = [(ln[:1], ln[1:]) for ln in lines]
                else:
                    parsed = [("", ln) for ln in lines]
                step.logs[lg["name"]] = Log(lg["name"], lg["type"], parsed)
            steps.append(step)
        props = self.api(f"builds/{buildid}/properties")["properties"]
        props = {k: tuple(v) for k, v in (props[0] if props else {}).items()}
        return Build(buildid, builder, b["results"], b["state_string"], steps, props)

    def uploads(self, worker: str) -> Path:
        return self.basedir / "uploads" / worker


# ------------------------------------------------------------------------------------------
# Workers
# ------------------------------------------------------------------------------------------

class WorkerBase:
    name: str

    def __init__(self, root: Path, master_port: int, password: str):
        self.root = Path(root)
        self.basedir = self.root / f"worker-{self.name}"
        self.home = self.root / f"home-{self.name}"
        self.master_port = master_port
        self.password = password
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
        self.env.update({"HOME": str(self.home), "LANG": "C.UTF-8", "KILN_INTEROP_MARK": "marked"})
        self.env.pop("LC_ALL", None)
        ACTIVE.append(self)

    def create(self):
        self.root.mkdir(parents=True, exist_ok=True)
        self.home.mkdir(exist_ok=True)
        p = run(self.create_cmd(), env=self.env, cwd=self.root)
        if p.returncode != 0:
            raise RuntimeError(f"{self.name}: create-worker failed ({p.returncode}):\n{p.stdout}")
        return p

    def start(self, timeout: float = 60) -> subprocess.CompletedProcess:
        return run(self.start_cmd(), env=self.env, cwd=self.root, timeout=timeout)

    def run_foreground(self) -> subprocess.Popen:
        """The worker in the foreground (kiln-worker run / buildbot-worker start --nodaemon)."""
        log = open(self.root / f"{self.name}-foreground.out", "wb")
        return subprocess.Popen([str(c) for c in self.foreground_cmd()], env=self.env,
                                cwd=self.root, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT)

    def stop(self, timeout: float = 60) -> subprocess.CompletedProcess | None:
        pid = self.pid()
        p = run(self.stop_cmd(), env=self.env, cwd=self.root, timeout=timeout)
        if pid and pid_alive(pid):
            try:
                wait_for(lambda: not pid_alive(pid), 10, what=f"{self.name} worker exit")
            except TimeoutError:
                os.kill(pid, signal.SIGKILL)
        return p

    def pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def running(self) -> bool:
        pid = self.pid()
        return pid is not None and pid_alive(pid)

    def log_tail(self, n: int = 60) -> str:
        return tail(self.log_path, n)

    def builder_dir(self, builder: str) -> Path:
        return self.basedir / builder


class StockWorker(WorkerBase):
    name = "stock"
    pidfile_name = "twistd.pid"

    def create_cmd(self):
        return [VENV_BIN / "buildbot-worker", "create-worker", "--protocol", PROTOCOL,
                self.basedir, f"127.0.0.1:{self.master_port}", self.name, self.password]

    def start_cmd(self):
        return [VENV_BIN / "buildbot-worker", "start", self.basedir]

    def stop_cmd(self):
        return [VENV_BIN / "buildbot-worker", "stop", self.basedir]

    def foreground_cmd(self):
        return [VENV_BIN / "buildbot-worker", "start", "--nodaemon", self.basedir]

    @property
    def pidfile(self) -> Path:
        return self.basedir / "twistd.pid"

    @property
    def log_path(self) -> Path:
        return self.basedir / "twistd.log"


class KilnWorker(WorkerBase):
    name = "kiln"

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.bin = kiln_worker_bin()
        if not self.bin.exists():
            raise FileNotFoundError(
                f"kiln-worker binary not found at {self.bin} (set KILN_WORKER_BIN, or run "
                f"`cargo build -p kiln-worker`, or select only the stock worker with "
                f"KILN_INTEROP_WORKERS=stock)")

    def create_cmd(self):
        # kiln-worker refuses to run build commands as root unless told (README "Root");
        # the stock worker has no such guard, so allow it to compare like with like.
        root = ["--allow-root"] if os.geteuid() == 0 else []
        return [self.bin, "create-worker", "--protocol", PROTOCOL, *root,
                self.basedir, f"127.0.0.1:{self.master_port}", self.name, self.password]

    def start_cmd(self):
        return [self.bin, "start", self.basedir]

    def stop_cmd(self):
        return [self.bin, "stop", self.basedir]

    def foreground_cmd(self):
        return [self.bin, "run", self.basedir]

    @property
    def pidfile(self) -> Path:
        for n in ("kiln-worker.pid", "twistd.pid"):
            if (self.basedir / n).exists():
                return self.basedir / n
        return self.basedir / "kiln-worker.pid"

    @property
    def log_path(self) -> Path:
        for n in ("kiln-worker.log", "twistd.log"):
            if (self.basedir / n).exists():
                return self.basedir / n
        logs = sorted(self.basedir.glob("*.log"))
        return logs[0] if logs else self.basedir / "kiln-worker.log"


WORKER_CLASSES = {"kiln": KilnWorker, "stock": StockWorker}


def make_worker(name: str, root: Path, master: Master, password: str | None = None) -> WorkerBase:
    return WORKER_CLASSES[name](root, master.msgpack_port,
                                master.passwords[name] if password is None else password)


# ------------------------------------------------------------------------------------------
# A counting TCP proxy (for the reconnect/backoff tests)
# ------------------------------------------------------------------------------------------

class CountingProxy:
    """Forwards 127.0.0.1:<port> to 127.0.0.1:<target>, recording when each connection came."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[float] = []
        self._stop = False
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def _accept_loop(self):
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.accepted.append(time.monotonic())
            try:
                u = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                c.close()
                continue
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a, b):
        try:
            a.settimeout(None)
            while True:
                data = a.recv(65536)
                if not data:
                    break
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self._stop = True
        self.sock.close()
        self._thread.join(2)


# Everything a test started, so that a failing test can show the logs (see conftest.py).
ACTIVE: list = []
