"""kiln-worker against the real Buildbot 4.3.0 master, side by side with the stock buildbot-worker.

One master (interop/master/master.cfg) serves two workers, `kiln` and `stock`; each has a builder
running the same factory. The suite forces one build per selected worker, reads both builds back
through the REST API and asserts, step by step: results, the log text the master stored, what the
transfers left on disk, and that the two workers agree — except for the deviations documented in
the spec (worker-protocol.md §7.2/§11), which are asserted exactly.

Select workers with KILN_INTEROP_WORKERS=kiln,stock (default both); kiln-worker binary from
KILN_WORKER_BIN (default target/debug/kiln-worker). KILN_INTEROP_KEEP=1 keeps the temp dir.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import harness
from harness import CANCELLED, EXCEPTION, FAILURE, RESULT_NAMES, SUCCESS

WORKERS = harness.selected_workers()
NEWLINE_RE = r'(\r\n|\r(?=.)|\033\[u|\033\[[0-9]+;[0-9]+[Hf]|\033\[2J|\x08+)'

# --------------------------------------------------------------------------------------------
# The farm: one master, the selected workers, one forced build each
# --------------------------------------------------------------------------------------------


@dataclass
class Farm:
    root: Path
    master: harness.Master
    workers: dict = field(default_factory=dict)
    start_results: dict = field(default_factory=dict)
    builds: dict = field(default_factory=dict)
    errors: dict = field(default_factory=dict)

    def build(self, name: str) -> harness.Build:
        if name in self.errors:
            pytest.fail(f"no build for worker {name}: {self.errors[name]}")
        return self.builds[name]

    def norm(self, name: str, text: str) -> str:
        """Worker-specific absolute paths → placeholders (<B> = builder dir, <HOME>)."""
        w = self.workers[name]
        bgdigit = {"kiln": "1", "stock": "2"}[name]   # builder property in master.cfg
        text = re.sub(r"1000(\\*\.)" + self.master.run_tag + bgdigit, r"1000\1<TAG>", text)
        return (text.replace(str(w.builder_dir(f"{name}-builder")), "<B>")
                .replace(str(w.home), "<HOME>").replace(str(w.basedir), "<WORKER>"))

    def uploads(self, name: str) -> Path:
        self.build(name)   # fails with the reason when that worker has no build
        return self.master.uploads(name)


@pytest.fixture(scope="module")
def farm():
    root = Path(tempfile.mkdtemp(prefix="kiln-interop-suite-"))
    tag = str(random.randint(100, 999))
    master = harness.Master(root, run_tag=tag)
    farm = Farm(root, master)
    try:
        master.create()
        master.start()
        for name in WORKERS:
            try:
                w = harness.make_worker(name, root, master)
                farm.workers[name] = w
                w.create()
                farm.start_results[name] = w.start()
            except Exception as e:  # keep going with the other worker
                farm.errors[name] = f"could not create/start: {e}"
        brids = {}
        for name in WORKERS:
            if name in farm.errors:
                continue
            try:
                master.wait_attached(name, f"{name}-builder", timeout=60)
                brids[name] = master.force(f"{name}-builder")
            except Exception as e:
                farm.errors[name] = (f"{e}\n--- {name} start output ---\n"
                                     f"{getattr(farm.start_results.get(name), 'stdout', '')}\n"
                                     f"--- {name} log ---\n{farm.workers[name].log_tail(40)}")
        for name, brid in brids.items():
            try:
                farm.builds[name] = master.fetch_build(master.wait_build(brid, timeout=600))
            except Exception as e:
                farm.errors[name] = f"build did not complete: {e}\n{farm.workers[name].log_tail(40)}"
        with open(root / "builds.json", "w") as fh:   # for KILN_INTEROP_KEEP=1 post-mortems
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
        harness.kill_tagged_sleeps(tag)
        harness.kill_strays(root)
        harness.ACTIVE.clear()
        if os.environ.get("KILN_INTEROP_KEEP"):
            print(f"\nkept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


per_worker = pytest.mark.parametrize("wname", WORKERS)
both = pytest.mark.skipif(set(WORKERS) != {"kiln", "stock"},
                          reason="needs both workers (KILN_INTEROP_WORKERS=kiln,stock)")

# --------------------------------------------------------------------------------------------
# Expected step results, in build order (identical for both workers)
# --------------------------------------------------------------------------------------------

EXPECTED_RESULTS = [
    ("worker_preparation", SUCCESS),
    ("prepare", SUCCESS),
    ("worker-info", SUCCESS),
    ("umask", SUCCESS),
    ("shell-env", SUCCESS),
    ("shell-env-inherit", SUCCESS),
    ("argv-rc3", FAILURE),
    ("argv-not-found", FAILURE),
    ("logfiles", SUCCESS),
    ("maxtime-sigterm", FAILURE),
    ("maxtime-sigterm-trapped", FAILURE),
    ("timeout-no-output", FAILURE),
    ("timeout-output-resets", SUCCESS),
    ("max-lines", FAILURE),
    ("no-stdout", SUCCESS),
    ("no-stderr", SUCCESS),
    ("pty", SUCCESS),
    ("no-pty", SUCCESS),
    ("initial-stdin", SUCCESS),
    ("interrupt-term", CANCELLED),
    ("interrupt-kill", CANCELLED),
    ("bg-pgrp-maxtime", FAILURE),
    ("bg-pgrp-interrupt", CANCELLED),
    ("bg-setsid-maxtime", FAILURE),
    ("bg-check", SUCCESS),
    ("long-line", SUCCESS),
    ("long-line-10k", SUCCESS),
    ("carriage-return", SUCCESS),
    ("non-utf8", SUCCESS),
    ("big-output", SUCCESS),
    ("string-download", SUCCESS),
    ("file-download", SUCCESS),
    ("check-download", SUCCESS),
    ("file-upload", SUCCESS),
    ("file-upload-binary", SUCCESS),
    ("file-upload-missing", FAILURE),
    ("dir-upload", SUCCESS),
    ("dir-upload-gz", SUCCESS),
    ("dir-upload-bz2", SUCCESS),
    ("dir-upload-missing", FAILURE),
    ("multi-upload-glob", SUCCESS),
    ("mkdir", SUCCESS),
    ("cpdir", SUCCESS),
    ("check-cpdir", SUCCESS),
    ("rmdir", SUCCESS),
    ("rmdir-missing", SUCCESS),
    ("check-fs", SUCCESS),
    ("stat", SUCCESS),
    ("stat-missing", FAILURE),
    ("stat-dir", FAILURE),
    ("fs-remote-commands", SUCCESS),
    ("exit-255", FAILURE),
    ("self-signal", FAILURE),
    ("unicode-argv", SUCCESS),
    ("unicode-shell", SUCCESS),
    ("workdir-created", SUCCESS),
    ("no-timeout", SUCCESS),
    ("pty-with-stdin", SUCCESS),
    ("env-path-list", SUCCESS),
    ("max-lines-stderr", FAILURE),
    ("file-upload-large", SUCCESS),
    ("file-upload-maxsize", FAILURE),
    ("dir-upload-unicode-big", SUCCESS),
    ("dir-upload-empty", SUCCESS),
    ("dir-upload-maxsize", EXCEPTION),      # truncated tar: the master's unpack fails
    ("download-bad-parent", FAILURE),
    ("mkdir-over-file", FAILURE),
    ("cpdir-missing", FAILURE),
    ("file-upload-keepstamp", EXCEPTION),   # 4.3.0 master bug (spec §6.5, §11.3), both workers
]


# Where kiln-worker deliberately ends a step differently from buildbot-worker.
KILN_RESULTS = {
    # kiln does not ask the master to unpack a tar stream cut short by maxsize
    # (crates/kiln-worker/src/commands/transfer.rs: "A truncated or abandoned archive is
    # not unpacked"): rc 1 → FAILURE; buildbot-worker sends the unpack, the master's tarfile
    # fails on the truncated stream → failure string in `complete` → EXCEPTION.
    "dir-upload-maxsize": FAILURE,
}


def expected_results(wname):
    exp = dict(EXPECTED_RESULTS)
    if wname == "kiln":
        exp.update(KILN_RESULTS)
    return exp


def rn(code):
    return RESULT_NAMES[code] if isinstance(code, int) and 0 <= code < len(RESULT_NAMES) else code


@per_worker
def test_worker_start_exit_code(farm, wname):
    if wname in farm.errors and wname not in farm.start_results:
        pytest.fail(farm.errors[wname])
    p = farm.start_results[wname]
    assert p.returncode == 0, f"`{wname} start` exited {p.returncode}:\n{p.stdout}"


def os_release_keys() -> set[str]:
    keys = set()
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            k, sep, v = line.partition("=")
            if sep and k.strip() and not k.startswith("#") and v.strip().strip('"'):
                keys.add("os_" + k.strip().lower())
    except OSError:
        pass
    return keys


def worker_info(farm, wname) -> dict:
    import json
    return json.loads("\n".join(farm.build(wname).step("worker-info").logs["info"].text))


ALL_COMMANDS = {"shell", "uploadFile", "upload_file", "uploadDirectory", "upload_directory",
                "downloadFile", "download_file", "mkdir", "rmdir", "cpdir", "stat", "glob",
                "listdir", "rmfile"}


@per_worker
def test_worker_info(farm, wname):
    """get_worker_info as the master stored it (spec §9)."""
    d = worker_info(farm, wname)
    info = d["info"]
    w = farm.workers[wname]
    assert d["worker_basedir"] == info["basedir"] == str(w.basedir)
    assert d["worker_system"] == info["system"] == "posix"
    assert info["numcpus"] == os.cpu_count()
    assert info["admin"] == "Your Name Here <admin@youraddress.invalid>\n"
    assert isinstance(info["host"], str) and info["host"].endswith("\n")
    assert isinstance(info["version"], str) and info["version"]
    assert "delete_leftover_dirs" in info
    assert os_release_keys() <= set(info), sorted(os_release_keys() - set(info))
    assert d["environ_HOME"] == str(w.home) and d["environ_has_PATH"]
    assert set(d["worker_commands"]) >= ALL_COMMANDS
    assert all(tuple(map(int, v.split("."))) >= (3, 3) for v in d["worker_commands"].values())
    rest = farm.master.api(f"workers?name={wname}")["workers"][0]["workerinfo"]
    assert rest["admin"] == info["admin"] and rest["version"] == info["version"]
    if wname == "stock":
        assert info["version"] == "4.3.0"
        assert info["delete_leftover_dirs"] == 0
        assert set(d["worker_commands"]) == ALL_COMMANDS


@both
def test_worker_info_same_keys(farm):
    keys = {w: set(worker_info(farm, w)["info"]) for w in ("kiln", "stock")}
    # kiln may add its extension key `kiln` (DESIGN.md: Kiln-to-Kiln extensions)
    assert keys["kiln"] - {"kiln"} == keys["stock"]


@per_worker
def test_step_results(farm, wname):
    b = farm.build(wname)
    got = [(s.name, s.results) for s in b.steps]
    problems = []
    if [n for n, _ in got] != [n for n, _ in EXPECTED_RESULTS]:
        problems.append(f"step names differ:\n  got      {[n for n, _ in got]}\n"
                        f"  expected {[n for n, _ in EXPECTED_RESULTS]}")
    exp = expected_results(wname)
    for s in b.steps:
        if s.name in exp and s.results != exp[s.name]:
            problems.append(f"{s.name}: {rn(s.results)} (expected {rn(exp[s.name])}) "
                            f"state={s.state_string!r} stdio={farm.norm(wname, repr(s.stdio.lines[-8:]))}")
    assert not problems, f"{wname}: " + "\n".join(problems)
    assert b.results == CANCELLED, f"build result {rn(b.results)}"  # interrupted steps


# --------------------------------------------------------------------------------------------
# Step-by-step content checks (both workers unless a deviation is documented)
# --------------------------------------------------------------------------------------------

def out(farm, wname, step):
    s = farm.build(wname).step(step)
    return [farm.norm(wname, x) for x in s.stdio.stdout]


def err(farm, wname, step):
    s = farm.build(wname).step(step)
    return [farm.norm(wname, x) for x in s.stdio.stderr]


def step(farm, wname, name):
    return farm.build(wname).step(name)


@per_worker
def test_prepare(farm, wname):
    assert out(farm, wname, "prepare") == ["prepared"]


@per_worker
def test_umask(farm, wname):
    # buildbot-worker is daemonised by twistd, whose default umask for daemons is 0077 (the
    # create-worker --umask option is unset); build commands inherit it, so every file a
    # build creates (and uploads with DirectoryUpload) is private. A worker that serves
    # builds "exactly like the stock worker" must do the same when no --umask is given.
    got = out(farm, wname, "umask")
    assert got == ["0077", "600"], (
        f"{wname}: build commands run with umask {got[0]} (files {got[1:]}); buildbot-worker "
        f"started by `start` runs them with 0077 (files 600)")


@per_worker
def test_shell_env(farm, wname):
    assert out(farm, wname, "shell-env") == [
        "FOO=bar", "MYPATH=/a:/b",
        "PYTHONPATH=/x:/y:",          # spec §8.3.2 / §11.9: trailing separator, worker has none
        "HOMECOPY=<HOME>/sub", "UNKNOWN=<>", "LANG=unset", "PWD=<B>/build", "MARK=marked",
        "no-newline",                 # final partial line flushed with a '\n'
    ]
    assert err(farm, wname, "shell-env") == ["oops"]
    s = step(farm, wname, "shell-env")
    assert s.rcs == [0]
    env_dump = [h for h in s.stdio.header if h.startswith("  ")]
    assert "  FOO=bar" in env_dump and "  MYPATH=/a:/b" in env_dump, "logEnviron=True: env in header"
    assert not any(h.startswith("  LANG=") for h in env_dump), "LANG=None must be removed"


@per_worker
def test_shell_env_inherit(farm, wname):
    assert out(farm, wname, "shell-env-inherit") == ["MARK=marked", "PWD=<B>/build", "LANG=C.UTF-8"]


@per_worker
def test_argv_rc3(farm, wname):
    s = step(farm, wname, "argv-rc3")
    assert s.stdio.stdout == ["xxxxxxxxxx", "arg1=with space"]
    assert s.rcs == [3]
    assert s.state_string == "'sh -c ...' (failure)"


@per_worker
def test_argv_not_found(farm, wname):
    s = step(farm, wname, "argv-not-found")
    assert s.results == FAILURE
    if wname == "stock":
        # buildbot-worker: the forked child's execvpe raises; Twisted prints the traceback
        # to the child's stderr and exits 1.
        assert s.rcs == [1]
        assert s.stdio.stderr[-1].startswith("FileNotFoundError: [Errno 2] No such file or directory")
    else:
        # kiln-worker: one stderr line and the shell's convention, rc 127
        assert s.rcs == [127]
        assert s.stdio.stderr == ['error in RunProcess._startCommand (cannot run '
                                  '"kiln-interop-no-such-command": No such file or directory '
                                  '(os error 2))']


@per_worker
def test_logfiles(farm, wname):
    s = step(farm, wname, "logfiles")
    assert s.stdio.stdout == ["done"]
    assert set(s.logs) == {"stdio", "plain", "follow"}
    # not following: the whole file, from its beginning, once it changed
    assert s.logs["plain"].stdout == ["old-plain", "new1", "new2", "new3"]
    if wname == "stock":
        # follow=True: buildbot-worker starts reading at the size it sees when it first
        # notices the change (the 2 s poll after `new1` was appended): `new1` is lost
        assert s.logs["follow"].stdout == ["new2", "new3"]
    else:
        # kiln-worker: everything appended after the command started (a deliberate fix,
        # crates/kiln-worker/src/commands/shell.rs LogWatcher)
        assert s.logs["follow"].stdout == ["new1", "new2", "new3"]


@per_worker
def test_maxtime_sigterm(farm, wname):
    s = step(farm, wname, "maxtime-sigterm")
    assert s.state_string == "'echo start; ...' (failure) (timed out)"
    assert s.stdio.stdout == ["start"]
    assert s.kill_reasons == ["timeout 2s elapsed"]
    assert s.signals == [15], "sigtermTime set: SIGTERM first, and sh dies of it"
    assert s.rcs == [-1]


@per_worker
def test_maxtime_sigterm_trapped(farm, wname):
    s = step(farm, wname, "maxtime-sigterm-trapped")
    assert s.state_string.endswith("(failure) (timed out)")
    # SIGTERM to the group: sh traps it (its `sleep 0.2` dies: "Terminated"), keeps looping;
    # after sigtermTime=1 s the interruptSignal (KILL) ends it.
    assert s.stdio.stdout.count("got-sigterm") == 1, (
        f"the TERM trap ran {s.stdio.stdout.count('got-sigterm')} times: SIGTERM was "
        f"delivered more than once (buildbot-worker sends one killpg)")
    assert s.stdio.stdout == ["start", "got-sigterm"]
    assert s.stdio.stderr == ["Terminated"]
    assert s.signals == [9]
    assert s.rcs == [-1]


@per_worker
def test_timeout_without_output(farm, wname):
    s = step(farm, wname, "timeout-no-output")
    assert s.state_string == "'sleep 10' (failure) (timed out)"
    assert s.stdio.stdout == [] and s.stdio.stderr == []
    assert s.kill_reasons == ["timeout 2s without output"]
    assert s.signals == [9]
    assert s.rcs == [-1]


@per_worker
def test_timeout_reset_by_output(farm, wname):
    s = step(farm, wname, "timeout-output-resets")
    assert s.stdio.stdout == ["tick1", "tick2", "tick3", "tick4"]
    assert s.rcs == [0] and s.kill_reasons == []


@per_worker
def test_max_lines(farm, wname):
    s = step(farm, wname, "max-lines")
    assert s.state_string == "'seq 1 ...' (failure) (max lines)"
    # the 10 lines arrive in one read; the whole read is forwarded, then the kill
    assert s.stdio.stdout == [str(i) for i in range(1, 11)]
    assert s.kill_reasons == ["max lines 10/5"]
    assert s.signals == [9]
    assert s.rcs == [-1]


@per_worker
def test_want_stdout_stderr(farm, wname):
    assert out(farm, wname, "no-stdout") == [] and err(farm, wname, "no-stdout") == ["to-stderr"]
    assert out(farm, wname, "no-stderr") == ["to-stdout"] and err(farm, wname, "no-stderr") == []


@per_worker
def test_pty(farm, wname):
    s = step(farm, wname, "pty")
    # under a PTY stderr and stdout are the same terminal: everything arrives as stdout
    assert s.stdio.stdout == ["stdout-is-tty", "stdin-is-tty", "err-via-pty"]
    assert s.stdio.stderr == []
    assert " using PTY: True" in s.stdio.header
    assert out(farm, wname, "no-pty") == ["stdout-not-tty", "stdin-not-tty", "stdin-eof"]


@per_worker
def test_initial_stdin(farm, wname):
    assert out(farm, wname, "initial-stdin") == ["hello stdin", "line2", "no-nl", "stdin-done"]


@per_worker
def test_interrupt_term(farm, wname):
    s = step(farm, wname, "interrupt-term")
    assert s.results == CANCELLED
    assert s.state_string == "'trap 'echo ...' (cancelled)"
    assert s.stdio.stdout[:1] == ["ready"]
    assert s.kill_reasons == ["interrupted"]
    if wname == "stock":
        # buildbot-worker closes the child's pipes right after the signal (cleanUp →
        # transport.loseConnection), so the trap's `echo got-term` is lost: the shell exits 7
        # or dies of SIGPIPE, depending on who wins the race.
        assert s.stdio.stdout == ["ready"]
        assert (s.rcs, s.signals) in (([7], []), ([-1], [13]))
    else:
        # interruptSignal=TERM reached sh (no KILL); kiln-worker keeps reading the pipes
        # until the process exits, so the trap's output arrives; sh exits 7
        assert s.stdio.stdout.count("got-term") == 1, (
            f"the TERM trap ran {s.stdio.stdout.count('got-term')} times: the signal was "
            f"delivered more than once (buildbot-worker sends one killpg)")
        assert s.stdio.stdout == ["ready", "got-term"]
        assert s.rcs == [7] and s.signals == []


@per_worker
def test_interrupt_kill_with_sigterm_time(farm, wname):
    s = step(farm, wname, "interrupt-kill")
    assert s.results == CANCELLED
    assert s.kill_reasons == ["interrupted"]
    assert s.signals == [15]
    assert s.rcs == [-1]


@per_worker
def test_background_processes(farm, wname):
    for name, res in (("bg-pgrp-maxtime", FAILURE), ("bg-pgrp-interrupt", CANCELLED),
                      ("bg-setsid-maxtime", FAILURE)):
        s = step(farm, wname, name)
        assert s.results == res, name
        assert s.stdio.stdout == ["bg-started"], name
    got = out(farm, wname, "bg-check")
    # bg1/bg2: `sleep … &` stays in the command's process group → killed with it.
    assert got[:2] == ["bg1=gone", "bg2=gone"]
    if wname == "stock":
        # bg3: `setsid sleep … &` left the group; buildbot-worker only signals the group,
        # so the grandchild survives (an orphan reparented to init).
        assert got[2] == "bg3=alive"
    else:
        # kiln-worker kills the command's whole process tree (README: "kills a build's whole
        # process tree when the master interrupts it or a timeout hits"), setsid or not
        assert got[2] == "bg3=gone"


def stock_line_split(data: str, read_size: int = 8192) -> list[str]:
    """What buildbot-worker 4.3.0 makes of `data` read from a pipe in `read_size` chunks:
    its own LineBoundaryFinder (with the long-line bug, spec §7.2/§11.13)."""
    from buildbot_worker.util.lineboundaries import LineBoundaryFinder
    f = LineBoundaryFinder(4096, NEWLINE_RE)
    text = ""
    for i in range(0, len(data), read_size):
        r = f.append(data[i:i + read_size], 0.0)
        if r:
            text += r[0]
    r = f.flush()
    if r:
        text += r[0]
    return text.split("\n")[:-1]


def kiln_line_split(data: str, max_len: int = 4096) -> list[str]:
    """Spec §7.2 rule 4 without the bug: chunks of max_line_length-1 characters."""
    res = []
    for line in data.split("\n")[:-1]:
        while len(line) > max_len - 1:
            res.append(line[:max_len - 1])
            line = line[max_len - 1:]
        res.append(line)
    return res


LONG6 = "".join(chr(65 + (i // 100) % 26) + str(i % 10) for i in range(3000))   # 6000 chars
LONG10 = "".join(chr(97 + (i // 100) % 26) + str(i % 10) for i in range(5000))  # 10000 chars


@per_worker
@pytest.mark.parametrize("name,data", [("long-line", "short\n" + LONG6 + "\nafter\n"),
                                       ("long-line-10k", LONG10 + "\n")])
def test_long_lines(farm, wname, name, data):
    got = out(farm, wname, name)
    if wname == "stock":
        expected = stock_line_split(data)
        assert got == expected
        lost = len(data.replace("\n", "")) - len("".join(got))
        assert lost > 0, "buildbot-worker 4.3.0 is known to lose characters of long lines"
    else:
        assert got == kiln_line_split(data), f"line lengths {[len(x) for x in got]}"
        assert "".join(got) == data.replace("\n", ""), "kiln-worker must keep every character"


@per_worker
def test_long_line_deviation_measured(farm, wname):
    """The exact characters buildbot-worker drops (documented, asserted; kiln drops none)."""
    got = "".join(out(farm, wname, "long-line"))
    full = "short" + LONG6 + "after"
    if wname == "stock":
        # line starts at offset 6 of the read: the first split keeps [0:4089], the bug then
        # skips the 7 characters up to the next max_line_length boundary
        assert got == "short" + LONG6[:4089] + LONG6[4096:] + "after"
    else:
        assert got == full
    got10 = out(farm, wname, "long-line-10k")
    if wname == "stock":
        # first read 8192 chars: [0:4095] kept, an empty line, then 4095 chars lost
        assert [len(x) for x in got10] == [4095, 0, 1810]
        assert "".join(got10) == LONG10[:4095] + LONG10[8190:]
    else:
        assert [len(x) for x in got10] == [4095, 4095, 1810]


@per_worker
def test_carriage_return_and_control_sequences(farm, wname):
    assert out(farm, wname, "carriage-return") == [
        "p1", "p2", "p3", "done", "ansi:", "cleared", "bs:ab", "cd",
        "tail",   # a lone trailing '\r' is not a newline; flushed at exit
    ]


@per_worker
def test_non_utf8(farm, wname):
    assert out(farm, wname, "non-utf8") == ["bad:\ufffd\ufffd:end", "trunc:\ufffd:end", "ok:\u20ac"]
    assert err(farm, wname, "non-utf8") == ["err:\ufffd"]


@per_worker
def test_big_output(farm, wname):
    s = step(farm, wname, "big-output")
    assert s.stdio.stdout == [str(i) for i in range(1, 30001)]
    assert s.stdio.stderr == [str(i) for i in range(1, 3001)]


@per_worker
def test_downloads_arrive_empty(farm, wname):
    # Buildbot 4.3.0 master bug (spec §6.8, §11.2): update_read_file answers None, so both
    # workers must end the download at once and leave an EMPTY file, with rc 0; mode applied,
    # missing parent directories created.
    for name in ("string-download", "file-download"):
        s = step(farm, wname, name)
        assert s.results == SUCCESS and s.rcs == [0], name
    assert out(farm, wname, "check-download") == ["0", "0", "750"]


def tree(path: Path) -> dict:
    """relative path → ('d',) | ('l', target) | ('f', content, executable)."""
    res = {}
    for p in sorted(path.rglob("*")):
        rel = str(p.relative_to(path))
        if p.is_symlink():
            res[rel] = ("l", os.readlink(p))
        elif p.is_dir():
            res[rel] = ("d",)
        else:
            res[rel] = ("f", p.read_bytes(), bool(p.stat().st_mode & stat.S_IXUSR))
    return res


EXPECTED_TREE = {
    "a.txt": ("f", b"a\n", False),
    "bin.dat": ("f", b"\x00\x01\x02\xffbin", False),
    "empty": ("d",),
    "link-to-a": ("l", "a.txt"),
    "run.sh": ("f", b"#!/bin/sh\necho hi\n", True),
    "sub": ("d",),
    "sub/b.txt": ("f", b"b\n", False),
    "sub/deeper": ("d",),
    "sub/deeper/c.txt": ("f", b"deep\n", False),
}


@per_worker
def test_file_uploads(farm, wname):
    up = farm.uploads(wname)
    assert (up / "up.txt").read_bytes() == b"abc"
    assert (up / "bin.dat").read_bytes() == b"\x00\x01\x02\xffbin"
    assert stat.S_IMODE((up / "bin.dat").stat().st_mode) == 0o640, "FileUpload(mode=0o640)"
    for name in ("file-upload", "file-upload-binary"):
        assert step(farm, wname, name).rcs == [0], name


@per_worker
def test_file_upload_missing_source(farm, wname):
    s = step(farm, wname, "file-upload-missing")
    assert s.results == FAILURE and s.rcs == [1]
    assert err(farm, wname, "file-upload-missing") == [
        "Cannot open file '<B>/build/missing.txt' for upload"]
    # the worker still sends update_upload_file_close (the master renames an empty temp file
    # into place), but the FileUpload step purges the destination because rc != 0
    assert not (farm.uploads(wname) / "missing.txt").exists()


@per_worker
@pytest.mark.parametrize("dest", ["tree-plain", "tree-gz", "tree-bz2"])
def test_directory_uploads(farm, wname, dest):
    assert tree(farm.uploads(wname) / dest) == EXPECTED_TREE


@per_worker
def test_directory_upload_missing_source(farm, wname):
    s = step(farm, wname, "dir-upload-missing")
    assert s.results == FAILURE and s.rcs == [1]
    e = err(farm, wname, "dir-upload-missing")
    assert len(e) == 1 and e[0].startswith("Cannot read directory '<B>/build/no-such-dir' for upload")
    assert not (farm.uploads(wname) / "no-such-dir").exists()


@per_worker
def test_multiple_file_upload_glob(farm, wname):
    s = step(farm, wname, "multi-upload-glob")
    assert s.state_string == "uploading 2 files"
    # glob '*' does not match dot files (Python glob semantics)
    assert tree(farm.uploads(wname) / "multi") == {"m1.txt": ("f", b"m1\n", False),
                                                   "m2.txt": ("f", b"m2\n", False)}


@per_worker
def test_fs_steps(farm, wname):
    assert step(farm, wname, "mkdir").state_string == "Created"
    assert step(farm, wname, "cpdir").state_string == "Copied build/tree to build/tree2"
    assert out(farm, wname, "check-cpdir") == [
        ".", "./a.txt", "./bin.dat", "./empty", "./link-to-a", "./run.sh", "./sub", "./sub/b.txt",
        "./sub/deeper", "./sub/deeper/c.txt", "a.txt", "deep"]
    assert step(farm, wname, "rmdir").state_string == "Deleted"
    assert step(farm, wname, "rmdir-missing").results == SUCCESS
    assert out(farm, wname, "check-fs") == ["newdir=yes", "tree2=no"]
    assert step(farm, wname, "stat").state_string == "File found."
    assert step(farm, wname, "stat-missing").state_string == "File not found. (failure)"
    assert step(farm, wname, "stat-dir").state_string == "Not a file. (failure)"


@per_worker
def test_raw_remote_commands(farm, wname):
    s = step(farm, wname, "fs-remote-commands")
    assert s.logs["results"].text == [
        "rmfile [('path', 'build/fs/torm.txt')] rc=0",
        "rmfile [('path', 'build/fs/torm.txt')] rc=2",
        "listdir [('dir', 'build/fs')] rc=0 files=['.hidden.txt', 'a.txt', 'link', 'sub', '\u00fc.txt']",
        "listdir [('dir', 'build/fs/missing')] rc=2",
        "glob [('path', 'build/fs/*.txt')] rc=0 files=['a.txt', '\u00fc.txt']",
        "glob [('path', 'build/fs/**/*.txt')] rc=0 files=['a.txt', 'sub/s.txt', '\u00fc.txt']",
        "glob [('path', 'build/fs/nothing-*.zzz')] rc=0 files=[]",
        "stat [('file', 'build/fs/a.txt')] rc=0 stat=[file size=5 n=10]",
        "stat [('file', 'build/fs/sub')] rc=0 stat=[dir size=- n=10]",
        "stat [('file', 'build/fs/missing')] rc=2",
        "stat [('file', 'build/fs/link')] rc=0 stat=[file size=5 n=10]",
        "listdir [('dir', 'build/fs/a.txt')] rc=20",                      # ENOTDIR
        "rmfile [('path', 'build/fs/sub')] rc=21",                        # EISDIR
        "glob [('path', 'build/fs/a.txt')] rc=0 files=['a.txt']",
        "glob [('path', 'build/fs/[ab].txt')] rc=0 files=['a.txt']",
        "mkdir [('dir', 'build/fs/a.txt')] rc=17",                        # EEXIST
        "mkdir [('dir', 'build/fs/a.txt/sub')] rc=20",                    # ENOTDIR
        "mkdir [('dir', ['build/fs/m1', 'build/fs/m2/deep'])] rc=0",
        "listdir [('dir', 'build/fs/m2')] rc=0 files=['deep']",
    ]


@per_worker
def test_exit_codes_and_signals(farm, wname):
    assert step(farm, wname, "exit-255").rcs == [255]
    s = step(farm, wname, "self-signal")
    assert s.stdio.stdout == ["before"]
    assert s.signals == [15] and s.rcs == [-1], "a child killed by a signal reports rc -1"
    assert s.kill_reasons == [], "the worker did not kill it"


@per_worker
def test_unicode(farm, wname):
    s = step(farm, wname, "unicode-argv")
    assert s.stdio.stdout == ["h\u00e9llo w\u00f6rld \u2713"]
    # argv shown as Python's repr of the UTF-8 encoded arguments
    assert r" argv: [b'printf', b'%s\\n', b'h\xc3\xa9llo w\xc3\xb6rld \xe2\x9c\x93']" in \
        s.stdio.header, s.stdio.header
    assert out(farm, wname, "unicode-shell") == ["gr\u00fc\u00dfe \u2713", "caf\u00e9"]


@per_worker
def test_workdir_created_and_no_timeout(farm, wname):
    assert out(farm, wname, "workdir-created") == ["<B>/build/new-wd/deep"]
    s = step(farm, wname, "no-timeout")
    assert s.stdio.stdout == ["ok"]
    assert farm.norm(wname, s.stdio.header[1]) == " in dir <B>/build", "no '(timeout N secs)'"


@per_worker
def test_pty_disabled_with_initial_stdin(farm, wname):
    s = step(farm, wname, "pty-with-stdin")
    assert s.stdio.stdout == ["x", "notty"]
    assert " using PTY: False" in s.stdio.header
    warn = [h for h in s.stdio.header if h.startswith("WARNING: disabling usePTY for this command")]
    if wname == "stock":
        # the warning lacks its newline and runs into the command line
        assert warn == ["WARNING: disabling usePTY for this command"
                        "cat; test -t 1 && echo tty || echo notty"]
    else:
        assert warn == ["WARNING: disabling usePTY for this command"]


@per_worker
def test_env_path_list(farm, wname):
    assert out(farm, wname, "env-path-list") == ["PATH=/usr/bin:/bin", "EMPTY=[]"]


@per_worker
def test_max_lines_counts_stderr(farm, wname):
    s = step(farm, wname, "max-lines-stderr")
    assert s.stdio.stderr == [str(i) for i in range(1, 11)]
    assert s.kill_reasons == ["max lines 10/5"] and s.signals == [9]


@per_worker
def test_large_and_unicode_uploads(farm, wname):
    big = "".join(f"{i}\n" for i in range(1, 120001)).encode()
    assert (farm.uploads(wname) / "big.txt").read_bytes() == big
    assert tree(farm.uploads(wname) / "tree-u") == {
        "big.txt": ("f", big, False),
        "emptydir": ("d",),
        "with space.txt": ("f", b"s\n", False),
        "\u00fcn\u00ef c\u00f6d\u00e9 \u2713.txt": ("f", b"u\n", False),
    }
    assert tree(farm.uploads(wname) / "emptydir") == {}
    assert (farm.uploads(wname) / "emptydir").is_dir()


@per_worker
def test_upload_maxsize(farm, wname):
    s = step(farm, wname, "file-upload-maxsize")
    assert s.rcs == [1]
    assert err(farm, wname, "file-upload-maxsize") == [
        "Maximum filesize reached, truncating file '<B>/build/tree/sub/deeper/c.txt'"]
    assert not (farm.uploads(wname) / "maxsize.txt").exists(), "purged on FAILURE"
    s = step(farm, wname, "dir-upload-maxsize")
    # the tar stream is cut at 1000 bytes. buildbot-worker still sends unpack, the master
    # cannot extract it and answers with an exception → EXCEPTION; kiln-worker stops
    # without unpacking → FAILURE (KILN_RESULTS)
    assert s.results == expected_results(wname)["dir-upload-maxsize"]
    assert s.rcs == [1]
    assert err(farm, wname, "dir-upload-maxsize") == [
        "Maximum filesize reached, truncating file '<B>/build/tree'"]
    assert not (farm.uploads(wname) / "tree-maxsize").exists()


@per_worker
def test_transfer_and_fs_errors(farm, wname):
    s = step(farm, wname, "download-bad-parent")
    assert s.rcs == [1]
    assert err(farm, wname, "download-bad-parent") == [
        "Cannot open file '<B>/build/up.txt/x' for download"]
    assert step(farm, wname, "mkdir-over-file").state_string == "Create failed. (failure)"
    assert step(farm, wname, "cpdir-missing").state_string == \
        "Copying build/nope to build/nope2 failed. (failure)"


@per_worker
def test_keepstamp_upload_is_exception(farm, wname):
    # Buildbot 4.3.0 master bug (spec §6.5, §11.3): update_upload_file_utime always answers
    # is_exception; the worker then completes with a failure string → step EXCEPTION. The file
    # was already renamed into place.
    s = step(farm, wname, "file-upload-keepstamp")
    assert s.results == EXCEPTION
    assert s.state_string == "uploading up.txt (exception)"
    assert "FileWriter.remote_utime() takes 2 positional arguments but 3 were given" in \
        "\n".join(s.logs["err.text"].text)
    assert (farm.uploads(wname) / "up-keepstamp.txt").read_bytes() == b"abc"


# --------------------------------------------------------------------------------------------
# The two workers agree, step by step
# --------------------------------------------------------------------------------------------

# Steps whose stored output legitimately differs; each is asserted exactly per worker above.
DEVIATING = {
    "long-line": "buildbot-worker loses characters of lines > 4096 (spec §7.2, §11.13)",
    "long-line-10k": "same",
    "argv-not-found": "buildbot-worker shows a Python traceback of execvpe; rc 1",
    "interrupt-term": "buildbot-worker closes the pipes after the signal: later output is lost",
    "bg-check": "a setsid'd grandchild survives buildbot-worker (it only signals the group)",
    "logfiles": "follow=True: buildbot-worker loses what was written before its first poll",
    "worker-info": "host text and kiln's extension key differ; see test_worker_info*",
    "dir-upload-maxsize": "kiln does not unpack a truncated archive (FAILURE, not EXCEPTION)",
}

# Single fields of a step that legitimately differ (the rest of the step is compared).
DEVIATING_FIELDS = {
    ("pty-with-stdin", "header"):
        "buildbot-worker omits the newline after 'WARNING: disabling usePTY for this command'",
}


def summary(farm, wname, s: harness.Step) -> dict:
    n = lambda xs: [farm.norm(wname, x) for x in xs]  # noqa: E731
    return {
        "results": rn(s.results),
        "state_string": farm.norm(wname, s.state_string),
        "logs": sorted(s.logs),
        "stdout": n(s.stdio.stdout),
        "stderr": n(s.stdio.stderr),
        # header text (command line, cwd/timeouts, argv repr, kill notices), without the
        # environment dump (the two worker processes' environments differ) and timings
        "header": [x for x in n(s.stdio.header)
                   if not x.startswith("  ") and not x.startswith("elapsedTime=")],
        "rc": s.rcs,
        "signals": s.signals,
        "kill_reasons": s.kill_reasons,
        "other_logs": {k: n(v.text) for k, v in s.logs.items()
                       if k not in ("stdio", "err.text", "err.html")},
    }


@both
def test_workers_agree_step_by_step(farm):
    kiln, stock = farm.build("kiln"), farm.build("stock")
    diffs = []
    for ks, ss in zip(kiln.steps, stock.steps):
        if ks.name != ss.name:
            diffs.append(f"step order differs: kiln {ks.name} vs stock {ss.name}")
            break
        if ks.name in DEVIATING or ks.name == "worker_preparation":
            continue
        a, b = summary(farm, "kiln", ks), summary(farm, "stock", ss)
        for k in a:
            if a[k] != b[k] and (ks.name, k) not in DEVIATING_FIELDS:
                diffs.append(f"{ks.name}.{k}:\n    kiln : {str(a[k])[:600]}\n    stock: {str(b[k])[:600]}")
    if len(kiln.steps) != len(stock.steps):
        diffs.append(f"kiln has {len(kiln.steps)} steps, stock {len(stock.steps)}")
    assert not diffs, "kiln-worker and buildbot-worker disagree:\n" + "\n".join(diffs)


@both
def test_workers_upload_the_same_files(farm):
    a, b = tree(farm.uploads("kiln")), tree(farm.uploads("stock"))
    assert a == b
