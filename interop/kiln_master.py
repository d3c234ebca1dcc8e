"""Drives a real Kiln master (`kiln run DIR`) for the interop suite, through its REST API.

The Kiln master serves Buildbot's `/api/v2` shape, so `KilnMaster` reuses `harness.Master`'s
REST readers (`api`, `rpc`, `fetch_build`, ...) and only replaces process control and the
few places where it must not depend on Buildbot's twistd.log. Everything listens on
127.0.0.1 (`bind = "127.0.0.1"` in master(), and `--bind` too should `kiln run` grow it).
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import time
import urllib.error
from pathlib import Path

import harness
from harness import REPO, free_port, run, tail, wait_for


def kiln_master_bin() -> Path:
    return Path(os.environ.get("KILN_MASTER_BIN", REPO / "target" / "debug" / "kiln")).resolve()


def kiln_master_available() -> str | None:
    """None when a usable `kiln` binary is there, else why not (for pytest.skip)."""
    b = kiln_master_bin()
    if not b.exists():
        return (f"kiln master binary not found at {b} (set KILN_MASTER_BIN or run "
                f"`cargo build -p kiln`)")
    p = run([b, "run", "--help"], timeout=30)
    if p.returncode != 0 or "not built yet" in p.stdout:
        return f"`{b} run --help` failed ({p.returncode}): {p.stdout.strip()[:300]}"
    return None


_BIND_SUPPORT: dict[str, bool] = {}


def _supports_bind(binary: Path) -> bool:
    key = str(binary)
    if key not in _BIND_SUPPORT:
        p = run([binary, "run", "--help"], timeout=30)
        _BIND_SUPPORT[key] = "--bind" in p.stdout
    return _BIND_SUPPORT[key]


class KilnMaster(harness.Master):
    """A Kiln master in `root/master`: `master.star`, `secrets/<name>`, `state.sqlite`.

    `star` is the body of master.star WITHOUT the `MASTER = master(...)` line; it is prepended
    here with this instance's ports. Worker passwords are secrets named like the workers.
    """

    def __init__(self, root: Path, star: str, *, passwords: dict[str, str] | None = None,
                 extra_files: dict[str, bytes] | None = None, title: str = "kiln-interop"):
        self.root = Path(root)
        self.basedir = self.root / "master"
        self.msgpack_port = free_port()
        self.www_port = free_port()
        self.passwords = {"kiln": "kiln-pass", "stock": "stock-pass", **(passwords or {})}
        self.run_tag = "0"
        self.star = star
        self.title = title
        self.extra_files = extra_files or {}
        self.url = f"http://127.0.0.1:{self.www_port}"
        self.bin = kiln_master_bin()
        self.env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
        self.env.setdefault("RUST_LOG", "info")
        self.proc: subprocess.Popen | None = None
        self._log_fh = None
        self.properties_fallback = False
        harness.ACTIVE.append(self)

    # -- process control ----------------------------------------------------------------
    def master_star(self) -> str:
        # bind: both ports on loopback only (master(bind=...), since main 26a0035)
        head = (f'MASTER = master(title = "{self.title}", web_port = {self.www_port}, '
                f'worker_port = {self.msgpack_port}, db_url = "sqlite:state.sqlite", '
                f'bind = "127.0.0.1")\n\n')
        return head + self.star

    def create(self):
        (self.basedir / "secrets").mkdir(parents=True, exist_ok=True)
        for name, pw in self.passwords.items():
            p = self.basedir / "secrets" / name
            p.write_text(pw)
            p.chmod(0o600)
        for rel, data in self.extra_files.items():
            p = self.basedir / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
        (self.basedir / "master.star").write_text(self.master_star())

    def command(self) -> list[str]:
        cmd = [str(self.bin), "run"]
        if _supports_bind(self.bin):
            cmd += ["--bind", "127.0.0.1"]
        return cmd + [str(self.basedir)]

    def start(self, timeout: float = 60):
        self._log_fh = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), cwd=self.basedir, env=self.env,
                                     stdin=subprocess.DEVNULL, stdout=self._log_fh,
                                     stderr=subprocess.STDOUT)

        def up():
            if self.proc.poll() is not None:
                raise RuntimeError(f"`{' '.join(self.command())}` exited {self.proc.returncode}:\n"
                                   f"{self.log_tail(40)}")
            return self._rest_up()
        wait_for(up, timeout, what="the Kiln master's REST API")

    def stop(self, timeout: float = 30):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self._log_fh:
            self._log_fh.close()
            self._log_fh = None

    def pid(self) -> int | None:
        return self.proc.pid if self.proc and self.proc.poll() is None else None

    def listening_addresses(self) -> set[str]:
        """Local addresses of this process's listening TCP sockets (from /proc/net/tcp*)."""
        pid = self.pid()
        if pid is None:
            return set()
        inodes = set()
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                t = os.readlink(fd)
            except OSError:
                continue
            if t.startswith("socket:["):
                inodes.add(t[8:-1])
        out = set()
        for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
            try:
                rows = Path(table).read_text().splitlines()[1:]
            except OSError:
                continue
            for row in rows:
                f = row.split()
                if f[3] != "0A" or f[9] not in inodes:     # 0A = LISTEN
                    continue
                addr, port = f[1].split(":")
                # IPv6 stays raw hex: any such listener is already not IPv4 loopback
                ip = f"[{addr}]" if v6 else socket.inet_ntoa(bytes.fromhex(addr)[::-1])
                out.add(f"{ip}:{int(port, 16)}")
        return out

    @property
    def log_path(self) -> Path:
        return self.root / "kiln-master.log"

    def log_tail(self, n: int = 80) -> str:
        return tail(self.log_path, n)

    # -- REST ---------------------------------------------------------------------------------
    def wait_attached(self, name: str, builder: str | None = None, *, since: int = 0,
                      timeout: float = 60):
        """Waits until REST lists worker `name` as connected (`connected_to` non-empty)."""
        def ok():
            try:
                return self.worker_connected(name)
            except (OSError, urllib.error.URLError, ValueError, IndexError, KeyError):
                return False
        try:
            wait_for(ok, timeout, what=f"worker {name} to be connected (REST workers?name={name})")
        except TimeoutError as e:
            raise TimeoutError(f"{e}\n--- kiln master log ---\n{self.log_tail(30)}")

    def worker_connected(self, name: str) -> bool:
        ws = [w for w in self.api("workers")["workers"] if w.get("name") == name]
        return bool(ws and ws[0].get("connected_to"))

    def force(self, builder: str, scheduler: str = "force", **params) -> int:
        """Forces a build through `POST /api/v2/forceschedulers/<scheduler>`; returns the
        build request id. Accepts Buildbot's result shape `[bsid, {builderid: brid}]` and a
        `{"buildsetid":..,"brids":{..}}` object."""
        bid = self.builder_id(builder)
        result = self.rpc(f"forceschedulers/{scheduler}", "force", {"builderid": bid, **params})
        if isinstance(result, list) and len(result) == 2 and isinstance(result[1], dict):
            brids = result[1]
        elif isinstance(result, dict) and isinstance(result.get("brids"), dict):
            brids = result["brids"]
        else:
            raise RuntimeError(f"force on {builder}: unexpected JSON-RPC result {result!r}; "
                               f"expected [bsid, {{builderid: brid}}]")
        return int(brids.get(str(bid), brids.get(bid, next(iter(brids.values())))))

    def builder_id(self, name: str) -> int:
        for b in self.api("builders")["builders"]:
            if b["name"] == name:
                return b["builderid"]
        raise KeyError(f"no builder {name!r} in REST builders")

    def builds_of_request(self, brid: int) -> list[dict]:
        # filter client-side as well: an API that ignored the filter would hand back all builds
        return [b for b in self.api(f"builds?buildrequestid={brid}")["builds"]
                if b.get("buildrequestid") == brid]

    def wait_build(self, brid: int, timeout: float = 300, start_timeout: float = 60) -> int:
        try:
            wait_for(lambda: self.builds_of_request(brid), start_timeout, interval=0.5,
                     what=f"a build to start for build request {brid}")
        except TimeoutError as e:
            raise TimeoutError(f"{e}; is the worker attached? kiln master log:\n{self.log_tail(15)}")

        def done():
            reqs = self.api(f"buildrequests/{brid}")["buildrequests"]
            if not reqs or not reqs[0]["complete"]:
                return None
            builds = [b for b in self.builds_of_request(brid) if b["complete"]]
            return builds[-1]["buildid"] if builds else None
        return wait_for(done, timeout, interval=0.5, what=f"build request {brid} to complete")

    def build_properties(self, buildid: int) -> dict:
        """name -> (value, source). Buildbot serves `builds/{id}/properties`; when the Kiln
        master answers 404 there, the `?property=*` field of `builds/{id}` is used instead
        (and `properties_fallback` is set, so a test can assert the endpoint itself)."""
        try:
            props = self.api(f"builds/{buildid}/properties")["properties"]
            props = props[0] if props else {}
        except urllib.error.HTTPError as e:
            if e.code != 404:
                raise
            self.properties_fallback = True
            props = self.api(f"builds/{buildid}?property=*")["builds"][0].get("properties") or {}
        return {k: tuple(v) if isinstance(v, list) else (v, None) for k, v in props.items()}

    def fetch_build(self, buildid: int) -> harness.Build:
        b = self.api(f"builds/{buildid}")["builds"][0]
        builder = self.api(f"builders/{b['builderid']}")["builders"][0]["name"]
        steps = []
        for s in self.api(f"builds/{buildid}/steps")["steps"]:
            step = harness.Step(s["number"], s["name"], s["results"], s["state_string"])
            for lg in self.api(f"steps/{s['stepid']}/logs")["logs"]:
                content = "".join(c["content"] for c in
                                  self.api(f"logs/{lg['logid']}/contents")["logchunks"])
                lines = content.split("\n")
                if lines and lines[-1] == "":
                    lines.pop()
                parsed = ([(ln[:1], ln[1:]) for ln in lines] if lg["type"] == "s"
                          else [("", ln) for ln in lines])
                step.logs[lg["name"]] = harness.Log(lg["name"], lg["type"], parsed)
            steps.append(step)
        return harness.Build(buildid, builder, b["results"], b["state_string"], steps,
                             self.build_properties(buildid))

    def builds_of_builder(self, builder: str) -> list[dict]:
        bid = self.builder_id(builder)
        return [b for b in self.api(f"builds?builderid={bid}")["builds"] if b["builderid"] == bid]

    def log_raw(self, logid: int) -> bytes:
        import urllib.request
        with urllib.request.urlopen(f"{self.url}/api/v2/logs/{logid}/raw", timeout=30) as r:
            return r.read()


# ------------------------------------------------------------------------------------------
# Raw WebSocket client pieces for the endpoint's negative tests
# ------------------------------------------------------------------------------------------

def ws_upgrade(port: int, user: str | None, password: str | None = None, *,
               authorization: str | None = None, timeout: float = 10) -> tuple[socket.socket, int, bytes]:
    """Sends a WebSocket upgrade to 127.0.0.1:<port> with Basic auth `user:password` (or the
    raw `authorization` header value; no header when both are None); returns (socket, HTTP
    status, raw response head). The socket stays open for the caller."""
    key = base64.b64encode(os.urandom(16)).decode()
    if authorization is None and user is not None:
        authorization = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    auth = f"Authorization: {authorization}\r\n" if authorization is not None else ""
    req = (f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
           f"{auth}\r\n").encode()
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(req)
    head = b""
    deadline = time.monotonic() + timeout
    while b"\r\n\r\n" not in head and time.monotonic() < deadline:
        chunk = s.recv(4096)
        if not chunk:
            break
        head += chunk
    first = head.split(b"\r\n", 1)[0].decode(errors="replace")
    parts = first.split()
    status = int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else -1
    return s, status, head


def ws_frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True,
             rsv: int = 0) -> bytes:
    """One client WebSocket frame (RFC 6455 §5.2); `rsv` sets the reserved bits (a protocol
    error when no extension was negotiated)."""
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload)
    if n < 126:
        hdr = bytes([b0, (0x80 if mask else 0) | n])
    elif n < 65536:
        hdr = bytes([b0, (0x80 if mask else 0) | 126]) + n.to_bytes(2, "big")
    else:
        hdr = bytes([b0, (0x80 if mask else 0) | 127]) + n.to_bytes(8, "big")
    if not mask:
        return hdr + payload
    key = os.urandom(4)
    return hdr + key + bytes(c ^ key[i % 4] for i, c in enumerate(payload))


def wait_closed(s: socket.socket, timeout: float = 15) -> bytes:
    """Reads until the peer closes the connection; returns what it sent (e.g. a close frame).
    Raises TimeoutError when the connection is still open after `timeout` seconds."""
    s.settimeout(0.5)
    got = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return got
        if not chunk:
            return got
        got += chunk
    raise TimeoutError(f"the connection stayed open for {timeout} s; received {got[:200]!r}")
