"""The Kiln master (`kiln run`) with real workers — kiln-worker and the stock buildbot-worker
4.3.0 — checked only through its REST API (`/api/v2`), plus the endpoint's refusals and the
side-by-side comparison with the real Buildbot 4.3.0 master (side_by_side.py).

One master.star has, per worker, a builder using every step type and flag Kiln offers (git
from a local repository made here with `git init`, transfers both ways with byte checks,
directory upload, set_property_from_command feeding an interpolated step, decode_rc,
warning_pattern, do_step_if true and false, timeout/max_time killing a sleep, env, workdir,
description, trigger with wait, halt_on_failure followed by always_run).

Needs the `kiln` binary (KILN_MASTER_BIN, default target/debug/kiln); skipped without it.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import harness
import kiln_master
import side_by_side
from harness import FAILURE, SKIPPED, SUCCESS, WARNINGS

WORKERS = harness.selected_workers()
per_worker = pytest.mark.parametrize("wname", WORKERS)

_why_not = kiln_master.kiln_master_available()
needs_kiln = pytest.mark.skipif(_why_not is not None, reason=_why_not or "")

# Bytes sent master → worker (file_download) and back (file_upload of the same file).
PAYLOAD = bytes((i * 7 + 3) % 256 for i in range(300_000))
# Bytes made on the worker by `printf` and uploaded.
WORKER_BYTES = b"\x00\x01\x02\xffkiln\n"
GIT_README = "from-git\n"
SPARE = "spare"           # a worker no process runs as: the raw WebSocket tests log in as it


def q(s: str) -> str:
    """A Starlark string literal."""
    return json.dumps(s)


def master_star(repo: Path, uploads: Path, payload: Path) -> str:
    """Workers `kiln`, `stock`, `spare`; per worker the builders all-<w> (every step type and
    flag), child-<w> (triggered), dirup-<w> (directory upload) and quick-<w>."""
    return f'''
WORKERS = [
    worker("kiln", password = secret("kiln"), max_builds = 2),
    worker("stock", password = secret("stock"), max_builds = 2),
    worker("{SPARE}", password = secret("{SPARE}")),
]

def dirup_steps(w):
    return [
        shell(name = "make-tree", command = "rm -rf tree; mkdir -p tree/sub tree/empty; "
              + "printf 'a\\n' > tree/a.txt; printf 'b\\n' > tree/sub/b.txt"),
        directory_upload(name = "dir-upload", workersrc = "tree",
                         masterdest = {q(str(uploads))} + "/" + w + "/tree"),
    ]

def all_steps(w):
    up = {q(str(uploads))} + "/" + w
    return [
        git(name = "git", repourl = {q(str(repo))}, branch = "main", mode = "full",
            method = "clobber", halt_on_failure = True),
        shell(name = "check-git", command = "cat README.txt; git rev-parse HEAD"),
        shell(name = "prepare", command = "printf '\\\\000\\\\001\\\\002\\\\377kiln\\\\n' > up.bin; "
              + "mkdir -p tree/sub; printf 'a\\\\n' > tree/a.txt; printf 'b\\\\n' > tree/sub/b.txt"),
        set_property_from_command(name = "setprop", command = "echo '  prop-from-worker  '",
                                  property = "fromcmd", strip = True),
        shell(name = "useprop", command = interpolate("echo got=%(prop:fromcmd)s")),
        configure(name = "configure", command = "echo configuring"),
        compile(name = "compile-warn", command = "echo 'x.c:1: warning: unused x'; echo built",
                warning_pattern = "warning:"),
        test(name = "test-rc", command = "echo testing; exit 5", decode_rc = {{0: SUCCESS, 5: WARNINGS}}),
        file_download(name = "file-download", mastersrc = {q(str(payload))}, workerdest = "sub/dl.bin"),
        string_download(name = "string-download", s = "string payload\\n", workerdest = "str.txt"),
        shell(name = "check-downloads",
              command = "cat str.txt; sha256sum sub/dl.bin | cut -c1-64; wc -c < sub/dl.bin"),
        file_upload(name = "file-upload", workersrc = "up.bin", masterdest = up + "/up.bin"),
        file_upload(name = "upload-roundtrip", workersrc = "sub/dl.bin", masterdest = up + "/roundtrip.bin"),
        mkdir(name = "mkdir", dir = "build/made/deep"),
        rmfile(name = "rmfile", file = "build/str.txt"),
        rmdir(name = "rmdir", dir = "build/tree"),
        shell(name = "check-fs", command = "test -d made/deep && echo made=yes; "
              + "test -e str.txt && echo str=yes || echo str=no; test -e tree && echo tree=yes || echo tree=no"),
        shell(name = "env", command = "echo FOO=$FOO; echo BAR=${{BAR-unset}}", env = {{"FOO": "bar-value"}}),
        shell(name = "workdir", command = "pwd", workdir = "wd/sub"),
        shell(name = "described", command = "echo described", description = "describing-it"),
        shell(name = "do-if-true", command = "echo ran", do_step_if = prop_equals("fromcmd", "prop-from-worker")),
        shell(name = "do-if-false", command = "echo should-not-run", do_step_if = prop_equals("fromcmd", "nope")),
        shell(name = "timeout", command = "echo start; sleep 30; echo end", timeout = 2),
        shell(name = "max-time", command = "echo start; sleep 30; echo end", max_time = 2, sigterm_time = 1),
        shell(name = "warn-on-failure", command = "exit 1", flunk_on_failure = False, warn_on_failure = True),
        trigger(name = "trigger", scheduler_names = ["child-" + w], wait_for_finish = True,
                set_properties = {{"from_parent": interpolate("%(prop:fromcmd)s")}}),
        shell(name = "halt", command = "echo halting; exit 2", halt_on_failure = True),
        shell(name = "never", command = "echo never-ran"),
        shell(name = "always", command = "echo always-ran", always_run = True),
    ]

WS = ["kiln", "stock"]

BUILDERS = [builder(name = "all-" + w, workers = [w], steps = all_steps(w)) for w in WS] + [
    builder(name = "child-" + w, workers = [w], steps = [
        shell(name = "child", command = interpolate("echo child got=%(prop:from_parent)s")),
    ])
    for w in WS
] + [
    builder(name = "dirup-" + w, workers = [w], steps = dirup_steps(w)) for w in WS
] + [
    builder(name = "quick-" + w, workers = [w], steps = [shell(name = "quick", command = "echo quick-ok")])
    for w in WS
]

SCHEDULERS = [triggerable("child-" + w, builder_names = ["child-" + w]) for w in WS] + [
    force("force", builder_names = ["all-" + w for w in WS] + ["quick-" + w for w in WS]
                  + ["dirup-" + w for w in WS]),
]
'''


def make_git_repo(path: Path) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"}
    path.mkdir(parents=True)
    harness.run(["git", "init", "-q", "-b", "main"], cwd=path, env=env, check=True)
    (path / "README.txt").write_text(GIT_README)
    harness.run(["git", "add", "README.txt"], cwd=path, env=env, check=True)
    harness.run(["git", "commit", "-q", "-m", "first"], cwd=path, env=env, check=True)
    return harness.run(["git", "rev-parse", "HEAD"], cwd=path, env=env, check=True).stdout.strip()


@dataclass
class KFarm:
    root: Path
    master: kiln_master.KilnMaster
    head: str
    workers: dict = field(default_factory=dict)
    builds: dict = field(default_factory=dict)
    errors: dict = field(default_factory=dict)
    dirup: dict = field(default_factory=dict)

    def build(self, name: str) -> harness.Build:
        if name in self.errors:
            pytest.fail(f"no build for worker {name}: {self.errors[name]}")
        return self.builds[name]

    def uploads(self, name: str) -> Path:
        return self.root / "uploads" / name

    def dirup_build(self, name: str) -> harness.Build:
        if name not in self.dirup:
            brid = self.master.force(f"dirup-{name}")
            self.dirup[name] = self.master.fetch_build(self.master.wait_build(brid, timeout=120))
        return self.dirup[name]

    def quick_build(self, name: str) -> harness.Build:
        brid = self.master.force(f"quick-{name}")
        return self.master.fetch_build(self.master.wait_build(brid, timeout=120))


@pytest.fixture(scope="module")
def kfarm():
    if _why_not is not None:
        pytest.skip(_why_not)
    root = Path(tempfile.mkdtemp(prefix="kiln-interop-kmaster-"))
    head = make_git_repo(root / "repo")
    (root / "uploads").mkdir()
    payload = root / "to-worker.bin"
    payload.write_bytes(PAYLOAD)
    master = kiln_master.KilnMaster(root, master_star(root / "repo", root / "uploads", payload),
                                    passwords={SPARE: "spare-pass"})
    farm = KFarm(root, master, head)
    try:
        master.create()
        master.start()
        for name in WORKERS:
            try:
                w = harness.make_worker(name, root, master)
                farm.workers[name] = w
                w.create()
                w.start()
            except Exception as e:
                farm.errors[name] = f"could not create/start: {e}"
        brids = {}
        for name in WORKERS:
            if name in farm.errors:
                continue
            try:
                master.wait_attached(name, timeout=60)
                brids[name] = master.force(f"all-{name}")
            except Exception as e:
                farm.errors[name] = f"{e}\n--- {name} log ---\n{farm.workers[name].log_tail(40)}"
        for name, brid in brids.items():
            try:
                farm.builds[name] = master.fetch_build(master.wait_build(brid, timeout=300))
            except Exception as e:
                farm.errors[name] = f"build did not complete: {e}\n{farm.workers[name].log_tail(40)}"
        with open(root / "builds.json", "w") as fh:
            json.dump({k: dataclasses.asdict(v) for k, v in farm.builds.items()}, fh, indent=1)
        yield farm
    finally:
        for w in farm.workers.values():
            try:
                w.stop()
            except Exception:
                pass
        try:
            master.stop()
        except Exception:
            pass
        harness.kill_strays(root)
        harness.ACTIVE.clear()
        if os.environ.get("KILN_INTEROP_KEEP"):
            print(f"\nkept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def test_master_listens_on_loopback_only(kfarm):
    m = kfarm.master
    assert m.listening_addresses() == {f"127.0.0.1:{m.www_port}", f"127.0.0.1:{m.msgpack_port}"}


# --------------------------------------------------------------------------------------------
# Every step type and flag, per worker
# --------------------------------------------------------------------------------------------

EXPECTED = [
    ("git", SUCCESS), ("check-git", SUCCESS), ("prepare", SUCCESS), ("setprop", SUCCESS),
    ("useprop", SUCCESS), ("configure", SUCCESS), ("compile-warn", WARNINGS), ("test-rc", WARNINGS),
    ("file-download", SUCCESS), ("string-download", SUCCESS), ("check-downloads", SUCCESS),
    ("file-upload", SUCCESS), ("upload-roundtrip", SUCCESS),
    ("mkdir", SUCCESS), ("rmfile", SUCCESS), ("rmdir", SUCCESS), ("check-fs", SUCCESS),
    ("env", SUCCESS), ("workdir", SUCCESS), ("described", SUCCESS), ("do-if-true", SUCCESS),
    ("do-if-false", SKIPPED), ("timeout", FAILURE), ("max-time", FAILURE),
    ("warn-on-failure", FAILURE), ("trigger", SUCCESS), ("halt", FAILURE), ("always", SUCCESS),
]


def out(farm, w, step):
    return farm.build(w).step(step).stdio.stdout


@per_worker
def test_step_results(kfarm, wname):
    b = kfarm.build(wname)
    got = [(s.name, harness.RESULT_NAMES[s.results] if s.results is not None else None)
           for s in b.steps if s.name != "never"]
    assert got == [(n, harness.RESULT_NAMES[r]) for n, r in EXPECTED]
    # halt_on_failure: the step after `halt` never ran (absent, as in Buildbot, or SKIPPED)
    never = [s for s in b.steps if s.name == "never"]
    assert all(s.results == SKIPPED and not s.stdio.stdout for s in never), never
    assert b.results == FAILURE


@per_worker
def test_git_and_property_interpolation(kfarm, wname):
    assert out(kfarm, wname, "check-git") == ["from-git", kfarm.head]
    assert kfarm.build(wname).properties["got_revision"][0] == kfarm.head
    assert kfarm.build(wname).properties["fromcmd"][0] == "prop-from-worker"
    assert out(kfarm, wname, "useprop") == ["got=prop-from-worker"]
    assert out(kfarm, wname, "setprop") == ["  prop-from-worker  "]


@per_worker
def test_shell_kinds_warning_pattern_decode_rc(kfarm, wname):
    assert out(kfarm, wname, "configure") == ["configuring"]
    assert out(kfarm, wname, "compile-warn") == ["x.c:1: warning: unused x", "built"]
    assert out(kfarm, wname, "test-rc") == ["testing"]
    assert kfarm.build(wname).step("test-rc").rcs == [5]


@per_worker
def test_transfers_both_ways(kfarm, wname):
    assert out(kfarm, wname, "check-downloads") == [
        "string payload", hashlib.sha256(PAYLOAD).hexdigest(), str(len(PAYLOAD))]
    up = kfarm.uploads(wname)
    assert (up / "up.bin").read_bytes() == WORKER_BYTES
    assert (up / "roundtrip.bin").read_bytes() == PAYLOAD


# The stock buildbot-worker tars the directory with Python's `tarfile.add(path, '')`: its root
# member is named "/" ("" plus tarfile's trailing slash for directories) and the others
# "/a.txt"…; Buildbot's master extracts them into the destination, and so must Kiln (fixed in
# main 534ee54; before it, Kiln refused the upload: "refusing tar entry  /: it would land outside").
@per_worker
def test_directory_upload(kfarm, wname):
    b = kfarm.dirup_build(wname)
    assert [(s.name, s.results) for s in b.steps] == [("make-tree", SUCCESS), ("dir-upload", SUCCESS)], \
        [(s.name, s.results, s.stdio.header[-3:]) for s in b.steps]
    up = kfarm.uploads(wname) / "tree"
    got = {str(p.relative_to(up)): (p.read_bytes() if p.is_file() else "dir")
           for p in sorted(up.rglob("*"))}
    assert got == {"a.txt": b"a\n", "sub": "dir", "sub/b.txt": b"b\n", "empty": "dir"}


@per_worker
def test_fs_env_workdir_description(kfarm, wname):
    assert out(kfarm, wname, "check-fs") == ["made=yes", "str=no", "tree=no"]
    assert out(kfarm, wname, "env") == ["FOO=bar-value", "BAR=unset"]
    pwd = out(kfarm, wname, "workdir")
    w = kfarm.workers[wname]
    assert len(pwd) == 1 and pwd[0].startswith(str(w.basedir) + "/") and pwd[0].endswith("/wd/sub"), pwd
    assert "describing-it" in kfarm.build(wname).step("described").state_string


@per_worker
def test_do_step_if(kfarm, wname):
    assert out(kfarm, wname, "do-if-true") == ["ran"]
    s = kfarm.build(wname).step("do-if-false")
    assert s.results == SKIPPED and "should-not-run" not in s.stdio.stdout


@per_worker
def test_timeout_and_max_time_kill(kfarm, wname):
    for name in ("timeout", "max-time"):
        s = kfarm.build(wname).step(name)
        assert s.results == FAILURE, name
        assert s.stdio.stdout == ["start"], (name, s.stdio.lines)   # `echo end` never ran
    b = kfarm.build(wname)
    assert any(r.startswith("timeout 2s") for r in b.step("timeout").kill_reasons), \
        b.step("timeout").stdio.header
    assert any(r.startswith("timeout 2s elapsed") for r in b.step("max-time").kill_reasons), \
        b.step("max-time").stdio.header


@per_worker
def test_trigger_waits_for_child(kfarm, wname):
    m = kfarm.master
    children = [c for c in m.builds_of_builder(f"child-{wname}") if c["complete"]]
    assert len(children) == 1, children
    child = m.fetch_build(children[0]["buildid"])
    assert child.results == SUCCESS
    assert child.step("child").stdio.stdout == ["child got=prop-from-worker"]
    # wait_for_finish: the parent's trigger step ended after the child did
    parent = kfarm.build(wname)
    trig = [s for s in m.api(f"builds/{parent.buildid}/steps")["steps"] if s["name"] == "trigger"][0]
    assert trig["complete_at"] >= children[0]["complete_at"]


@per_worker
def test_halt_then_always_run(kfarm, wname):
    assert out(kfarm, wname, "halt") == ["halting"]
    assert out(kfarm, wname, "always") == ["always-ran"]


@per_worker
def test_log_endpoints_raw_and_contents(kfarm, wname):
    m = kfarm.master
    b = kfarm.build(wname)
    steps = {s["name"]: s for s in m.api(f"builds/{b.buildid}/steps")["steps"]}
    logs = m.api(f"steps/{steps['useprop']['stepid']}/logs")["logs"]
    stdio = [lg for lg in logs if lg["name"] == "stdio"]
    assert stdio, logs
    logid = stdio[0]["logid"]
    raw = m.log_raw(logid).decode()
    assert "got=prop-from-worker" in raw
    assert m.api(f"logs/{logid}")["logs"][0]["name"] == "stdio"
    content = "".join(c["content"] for c in m.api(f"logs/{logid}/contents")["logchunks"])
    assert "ogot=prop-from-worker\n" in content


# --------------------------------------------------------------------------------------------
# The worker endpoint: wrong password, malformed frames
# --------------------------------------------------------------------------------------------

def _log_text(w) -> str:
    text = ""
    for p in (w.log_path, w.root / f"{w.name}-foreground.out"):
        try:
            text += Path(p).read_text(errors="replace")
        except OSError:
            pass
    return text


AUTH_STAR = """
WORKERS = [worker("kiln", password = secret("kiln")), worker("stock", password = secret("stock"))]
BUILDERS = [builder(name = "quick-" + w, workers = [w], steps = [shell(name = "quick", command = "echo quick-ok")])
            for w in ["kiln", "stock"]]
SCHEDULERS = [force("force", builder_names = ["quick-kiln", "quick-stock"])]
"""


@pytest.fixture
def authlab():
    """A fresh master per test: the endpoint answers 429 to everyone from an address after 10
    failed logins a minute, and all of this suite's clients come from 127.0.0.1."""
    if _why_not is not None:
        pytest.skip(_why_not)
    root = Path(tempfile.mkdtemp(prefix="kiln-interop-auth-"))
    m = kiln_master.KilnMaster(root, AUTH_STAR)
    workers = []
    try:
        m.create()
        m.start()
        yield m, root, workers
    finally:
        for w in workers:
            try:
                w.stop()
            except Exception:
                pass
        m.stop()
        harness.kill_strays(root)
        harness.ACTIVE.clear()
        shutil.rmtree(root, ignore_errors=True)


@per_worker
def test_wrong_password_is_refused_with_401(authlab, wname):
    m, root, workers = authlab
    good = harness.make_worker(wname, root, m)
    workers.append(good)
    good.create()
    good.start()
    m.wait_attached(wname)

    s, status, head = kiln_master.ws_upgrade(m.msgpack_port, wname, "wrong-password")
    s.close()
    assert status == 401, head
    s, status, head = kiln_master.ws_upgrade(m.msgpack_port, "no-such-worker", "x")
    s.close()
    assert status == 401, head
    # a real worker with a wrong password: its log says the master answered 401
    w = harness.WORKER_CLASSES[wname](root / "badpw", m.msgpack_port, "wrong-password")
    w.create()
    p = w.run_foreground()
    try:
        harness.wait_for(lambda: "401" in _log_text(w), 30, what=f"{wname}'s log to mention 401")
    finally:
        p.kill()
        p.wait(10)
    # the attached worker is unaffected and still builds
    assert m.worker_connected(wname)
    b = m.fetch_build(m.wait_build(m.force(f"quick-{wname}"), timeout=120))
    assert b.results == SUCCESS and b.step("quick").stdio.stdout == ["quick-ok"]


# What Buildbot 4.3.0's msgpack port answers (measured with interop/master/master.cfg):
# no header → 401, a header it cannot parse → 400.
BAD_AUTH = {
    "no header": (None, 401),
    "basic, not base64": ("Basic !!!notbase64", 400),
    "bearer scheme": ("Bearer abc", 400),
    "basic without a colon": ("Basic " + base64.b64encode(b"kiln").decode(), 400),
}


@pytest.mark.parametrize("case", sorted(BAD_AUTH))
def test_bad_authorization_header_answers_like_buildbot(authlab, case):
    header, want = BAD_AUTH[case]
    s, status, head = kiln_master.ws_upgrade(authlab[0].msgpack_port, None, authorization=header)
    s.close()
    assert status == want, head


MALFORMED = {
    # opcode 0x3 is reserved (RFC 6455 §5.2)
    "reserved-opcode": lambda: kiln_master.ws_frame(0x3, b"x"),
    # RSV1 set without a negotiated extension
    "rsv-bits": lambda: kiln_master.ws_frame(0x2, b"\x80", rsv=4),
    # clients must mask their frames (§5.1)
    "unmasked": lambda: kiln_master.ws_frame(0x2, b"\x80", mask=False),
    # a well-formed binary frame whose payload is not msgpack (0xc1 is never used)
    "garbage-msgpack": lambda: kiln_master.ws_frame(0x2, b"\xc1\xc1\xc1"),
}


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_malformed_frame_closes_only_that_connection(kfarm, kind):
    m = kfarm.master
    s, status, head = kiln_master.ws_upgrade(m.msgpack_port, SPARE, "spare-pass")
    try:
        assert status == 101, head
        s.sendall(MALFORMED[kind]())
        kiln_master.wait_closed(s, timeout=15)
    finally:
        s.close()
    for name in WORKERS:
        if name in kfarm.errors:
            continue
        assert m.worker_connected(name), f"{name} lost its connection after a {kind} frame"
        b = kfarm.quick_build(name)
        assert b.results == SUCCESS and b.step("quick").stdio.stdout == ["quick-ok"]


# --------------------------------------------------------------------------------------------
# Side by side with Buildbot 4.3.0
# --------------------------------------------------------------------------------------------

@needs_kiln
@per_worker
def test_side_by_side(wname):
    """The scenario on Buildbot 4.3.0 and on Kiln, both masters with the same worker."""
    root = Path(tempfile.mkdtemp(prefix="kiln-side-by-side-"))
    try:
        bb, kn = side_by_side.run_both(root, wname)
        assert bb.error is None, f"Buildbot side: {bb.error}"
        assert kn.error is None, f"Kiln side: {kn.error}"
        table, diffs = side_by_side.compare(bb, kn)
        print("\n".join(table))
        assert not diffs, "\n".join(table + ["", *diffs])
    finally:
        harness.ACTIVE.clear()
        if not os.environ.get("KILN_INTEROP_KEEP"):
            shutil.rmtree(root, ignore_errors=True)


def test_side_by_side_reports_differences():
    """The comparison itself: a changed result, a changed stdout line, a missing step and a
    different upload are each reported (so a green side-by-side means something)."""
    S = side_by_side.StepView
    bb = side_by_side.SideResult("buildbot", "FAILURE", [
        S("a", "SUCCESS", ["x"], []), S("b", "FAILURE", ["y"], ["e"]), S("c", "SUCCESS", [], [])],
        "v", b"data")
    same = dataclasses.replace(bb, side="kiln")
    assert side_by_side.compare(bb, same)[1] == []
    kn = side_by_side.SideResult("kiln", "FAILURE", [
        S("a", "WARNINGS", ["x"], []), S("b", "FAILURE", ["y2"], ["e"])], "v", b"other")
    diffs = side_by_side.compare(bb, kn)[1]
    assert any(d.startswith("step 'a': result SUCCESS vs WARNINGS") for d in diffs), diffs
    assert any(d.startswith("step 'b': stdout") for d in diffs), diffs
    assert any(d.startswith("step 'c': step missing") for d in diffs), diffs
    assert any(d.startswith("uploaded uploads/dl.txt") for d in diffs), diffs
