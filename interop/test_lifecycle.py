"""Worker lifecycle against a real Buildbot 4.3.0 master: reconnect after a master restart,
backoff after a refused login (HTTP 401), and `start` reporting success only once attached.

Run for each worker in KILN_INTEROP_WORKERS (default kiln,stock). The stock buildbot-worker is
the reference: where it behaves differently from what kiln-worker must do (its reconnect
counter resets on every TCP connect, so a wrong password is retried every ~2 s forever —
spec §2.5), that behaviour is asserted as measured.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path

import pytest

import harness
from harness import SUCCESS

WORKERS = harness.selected_workers()
per_worker = pytest.mark.parametrize("wname", WORKERS)


class Lab:
    def __init__(self, root: Path):
        self.root = root
        self.master = harness.Master(root)
        self.workers: list[harness.WorkerBase] = []
        self.proxies: list[harness.CountingProxy] = []

    def worker(self, name: str, *, port: int | None = None, password: str | None = None):
        cls = harness.WORKER_CLASSES[name]
        w = cls(self.root, port or self.master.msgpack_port,
                self.master.passwords[name] if password is None else password)
        self.workers.append(w)
        w.create()
        return w

    def proxy(self) -> harness.CountingProxy:
        p = harness.CountingProxy(self.master.msgpack_port)
        self.proxies.append(p)
        return p

    def quick_build(self, name: str) -> harness.Build:
        brid = self.master.force(f"{name}-quick")
        return self.master.fetch_build(self.master.wait_build(brid, timeout=120))


@pytest.fixture
def lab():
    root = Path(tempfile.mkdtemp(prefix="kiln-interop-lifecycle-"))
    lab = Lab(root)
    try:
        lab.master.create()
        lab.master.start()
        yield lab
    finally:
        for w in lab.workers:
            try:
                w.stop()
            except Exception:
                pass
        for p in lab.proxies:
            p.close()
        try:
            lab.master.stop()
        except Exception:
            pass
        harness.kill_strays(root)
        harness.ACTIVE.clear()
        if os.environ.get("KILN_INTEROP_KEEP"):
            print(f"\nkept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def log_text(w) -> str:
    try:
        return w.log_path.read_text(errors="replace")
    except OSError:
        return ""


def raw_handshake(port: int, name: str, password: str) -> str:
    """The status line the master answers to a WebSocket upgrade with these credentials."""
    auth = base64.b64encode(f"{name}:{password}".encode()).decode()
    req = (f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
           f"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           f"Sec-WebSocket-Version: 13\r\nAuthorization: Basic {auth}\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(req.encode())
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.split(b"\r\n")[0].decode("latin-1")


# (a) ------------------------------------------------------------------------------------------

@per_worker
def test_reconnects_after_master_restart(lab, wname):
    w = lab.worker(wname)
    p = w.start()
    assert p.returncode == 0, p.stdout
    lab.master.wait_attached(wname)
    b = lab.quick_build(wname)
    assert b.results == SUCCESS and b.step("quick").stdio.stdout == ["quick-ok"]
    pid = w.pid()
    attached_before = log_text(w).count("message from master: attached")

    since = lab.master.log_size()
    lab.master.restart()
    lab.master.wait_attached(wname, since=since, timeout=90)

    # the same process reconnected by itself, and the master ran the attach sequence again
    assert w.pid() == pid and w.running()
    assert log_text(w).count("message from master: attached") > attached_before
    b2 = lab.quick_build(wname)
    assert b2.results == SUCCESS, [(s.name, s.results, s.stdio.lines) for s in b2.steps]
    assert b2.step("quick").stdio.stdout == ["quick-ok"]


# (b) ------------------------------------------------------------------------------------------

WINDOW = 20.0


@per_worker
def test_wrong_password_backs_off(lab, wname):
    assert raw_handshake(lab.master.msgpack_port, wname, "wrong-password") == \
        "HTTP/1.1 401 Unauthorized"
    proxy = lab.proxy()
    w = lab.worker(wname, port=proxy.port, password="wrong-password")
    p = w.start(timeout=60)
    # never attached, so `start` must not report success
    assert p.returncode != 0, f"`start` exited 0 with a wrong password:\n{p.stdout}"
    harness.wait_for(lambda: proxy.accepted, 15, what="a first connection attempt")
    first = proxy.accepted[0]
    time.sleep(max(0.0, first + WINDOW + 0.5 - time.monotonic()))
    attempts = [t - first for t in proxy.accepted if t - first <= WINDOW]
    gaps = [round(b - a, 2) for a, b in zip(attempts, attempts[1:])]
    assert not lab.master.worker_connected(wname)
    assert "401" in log_text(w), "the worker log should say the master answered 401"
    info = f"{len(attempts)} attempts in {WINDOW:.0f} s, gaps {gaps}"
    print(f"{wname}: {info}")
    if wname == "stock":
        # buildbot-worker 4.3.0 resets its backoff on every successful TCP connect, so a
        # refused login is retried every 1.5–2.5 s forever (spec §2.5): measured, not desired
        assert len(attempts) >= 8, info
        assert max(gaps) < 4.0, info
    else:
        # kiln-worker: exponential backoff (1.5^n s, jittered, ≥ 1 s): at most 7 attempts in
        # 20 s, and the delays grow
        assert len(attempts) <= 7, info
        assert len(gaps) >= 4, info
        assert gaps[3] > gaps[0], info
        assert max(gaps) >= 2.5, info
        # and its log says so ("retrying in N s", growing)
        delays = [float(x) for x in re.findall(r"retrying in ([0-9.]+) s", log_text(w))]
        assert len(delays) >= 4 and max(delays[3:]) > delays[0], f"logged delays {delays}"
    s = w.stop()
    assert s.returncode == 0, s.stdout
    assert not w.running()


# (c) ------------------------------------------------------------------------------------------

@per_worker
def test_start_exits_0_once_attached(lab, wname):
    w = lab.worker(wname)
    t0 = time.monotonic()
    p = w.start()
    took = time.monotonic() - t0
    assert p.returncode == 0, p.stdout
    assert took < 15, f"start took {took:.1f} s"
    # `start` returned because it saw the greeting: it is in the log already
    assert "message from master: attached" in log_text(w)
    assert w.running(), "the worker must keep running in the background"
    lab.master.wait_attached(wname, timeout=30)   # and the master finished attaching it
    assert lab.master.worker_connected(wname)
    pid = w.pid()

    # a second start refuses while the first one runs, and leaves it alone
    p2 = w.start()
    assert p2.returncode != 0, f"second `start` exited 0:\n{p2.stdout}"
    assert w.pid() == pid and w.running()

    s = w.stop()
    assert s.returncode == 0, s.stdout
    harness.wait_for(lambda: not harness.pid_alive(pid), 15, what="the worker to exit")
    harness.wait_for(lambda: not lab.master.worker_connected(wname), 30,
                     what="the master to see the worker go")


# (d) ------------------------------------------------------------------------------------------

@per_worker
@pytest.mark.parametrize("action", ["kill", "stop"])
def test_master_shuts_the_worker_down(lab, wname, action):
    """REST `kill` (immediate) and `stop` (graceful, the worker is idle) make the master send
    the msgpack `shutdown` op; the worker answers and its process exits (spec §5.7)."""
    w = lab.worker(wname)
    assert w.start().returncode == 0
    lab.master.wait_attached(wname)
    pid = w.pid()
    t0 = time.monotonic()
    lab.master.control_worker(wname, action)
    harness.wait_for(lambda: not harness.pid_alive(pid), 20, what=f"{wname} to exit after {action}")
    took = time.monotonic() - t0
    assert took < 10, f"exited {took:.1f} s after the request"
    harness.wait_for(lambda: not lab.master.worker_connected(wname), 30,
                     what="the master to see the worker go")
    assert "'op': 'shutdown'" in lab.master.log_path.read_text(errors="replace")
    # it stays down: nobody restarts it
    time.sleep(3)
    assert not lab.master.worker_connected(wname)


# (e) ------------------------------------------------------------------------------------------

@per_worker
def test_foreground_run_and_sigterm(lab, wname):
    """`kiln-worker run` (stock: `buildbot-worker start --nodaemon`) serves builds in the
    foreground and exits on SIGTERM."""
    w = lab.worker(wname)
    proc = w.run_foreground()
    try:
        lab.master.wait_attached(wname, timeout=30)
        b = lab.quick_build(wname)
        assert b.results == SUCCESS and b.step("quick").stdio.stdout == ["quick-ok"]
        proc.terminate()
        rc = proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = (lab.root / f"{wname}-foreground.out").read_text(errors="replace")
    # buildbot-worker: twistd shuts down cleanly, then re-raises the signal so the exit
    # status says what stopped it (-15); kiln-worker exits 0 after a clean stop.
    expected = -signal.SIGTERM if wname == "stock" else 0
    assert rc == expected, f"exit status {rc} after SIGTERM:\n{out[-2000:]}"
    harness.wait_for(lambda: not lab.master.worker_connected(wname), 30,
                     what="the master to see the worker go")
