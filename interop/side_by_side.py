"""One scenario on the real Buildbot 4.3.0 master and on the Kiln master, both with kiln-worker,
compared through each master's REST API.

    python interop/side_by_side.py [--worker kiln|stock]   (interop venv; default kiln-worker)

The scenario is `interop/scenario/master.cfg` (Buildbot) and `interop/scenario/master.star`
(Kiln): the same steps with the same names. For every step the comparison takes the result
and the `o`/`e` (stdout/stderr) lines of its `stdio` log; header lines (`h`: argv, cwd,
elapsedTime, environment, exit code) differ by design and are left out, as are the temp
directory paths (replaced by `<WORKER>`/`<MASTER>`). Buildbot's own `worker_preparation`
pseudo-step is not part of the scenario and is dropped. It also compares the build result,
the property set from the command, and the bytes of the uploaded file.

Prints a table and exits 1 on any difference (2 when a side could not run at all).
With `--worker stock` both masters get the stock buildbot-worker instead of kiln-worker.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import harness
import kiln_master
from harness import RESULT_NAMES

SCENARIO = Path(__file__).resolve().parent / "scenario"
BUILDER = "scenario"
# Buildbot bookkeeping that is not a step of the scenario.
BUILDBOT_ONLY_STEPS = {"worker_preparation"}


class ScenarioBuildbotMaster(harness.Master):
    def create(self):
        super().create()
        shutil.copy(SCENARIO / "master.cfg", self.basedir / "master.cfg")

    def upload_dir(self) -> Path:
        return self.basedir / "uploads"


@dataclass
class StepView:
    name: str
    result: str
    stdout: list[str]
    stderr: list[str]


@dataclass
class SideResult:
    side: str
    build_result: str
    steps: list[StepView]
    myprop: object
    upload: bytes | None
    error: str | None = None


def _result_name(r) -> str:
    if r is None:
        return "-"
    return RESULT_NAMES[r] if 0 <= r < len(RESULT_NAMES) else str(r)


def view(build: harness.Build, replacements: dict[str, str]) -> list[StepView]:
    def norm(s: str) -> str:
        for k, v in replacements.items():
            s = s.replace(k, v)
        return s
    out = []
    for s in build.steps:
        if s.name in BUILDBOT_ONLY_STEPS:
            continue
        out.append(StepView(s.name, _result_name(s.results),
                            [norm(t) for t in s.stdio.stdout], [norm(t) for t in s.stdio.stderr]))
    return out


def scenario_worker(kind: str, root: Path, master) -> harness.WorkerBase:
    """kiln-worker or the stock buildbot-worker, logging in as the scenario's worker `kiln`."""
    cls = type(f"Scenario{harness.WORKER_CLASSES[kind].__name__}", (harness.WORKER_CLASSES[kind],),
               {"name": "kiln"})
    return cls(root, master.msgpack_port, master.passwords["kiln"])


def _run_side(side: str, master, root: Path, upload: Path, worker: str) -> SideResult:
    w = scenario_worker(worker, root, master)
    try:
        master.create()
        master.start()
        w.create()
        w.start()
        master.wait_attached("kiln", BUILDER, timeout=60)
        brid = master.force(BUILDER)
        build = master.fetch_build(master.wait_build(brid, timeout=180))
        reps = {str(w.basedir): "<WORKER>", str(master.basedir): "<MASTER>", str(root): "<ROOT>"}
        prop = build.properties.get("myprop", (None,))[0]
        data = upload.read_bytes() if upload.exists() else None
        return SideResult(side, _result_name(build.results), view(build, reps), prop, data)
    finally:
        try:
            w.stop()
        except Exception:
            pass
        try:
            master.stop()
        except Exception:
            pass
        harness.kill_strays(root)


def run_buildbot(root: Path, worker: str = "kiln") -> SideResult:
    m = ScenarioBuildbotMaster(root)
    return _run_side("buildbot", m, root, m.basedir / "uploads" / "dl.txt", worker)


def run_kiln(root: Path, worker: str = "kiln") -> SideResult:
    star = (SCENARIO / "master.star").read_text()
    m = kiln_master.KilnMaster(root, star, title="kiln-side-by-side")
    return _run_side("kiln", m, root, m.basedir / "uploads" / "dl.txt", worker)


def compare(bb: SideResult, kn: SideResult) -> tuple[list[str], list[str]]:
    """Returns (table lines, differences)."""
    diffs: list[str] = []
    rows = [("step", "buildbot", "kiln", "stdout", "stderr", "")]
    bsteps = {s.name: s for s in bb.steps}
    ksteps = {s.name: s for s in kn.steps}
    names = [s.name for s in bb.steps] + [s.name for s in kn.steps if s.name not in bsteps]
    for n in names:
        b, k = bsteps.get(n), ksteps.get(n)
        br = b.result if b else "(absent)"
        kr = k.result if k else "(absent)"
        so = se = "-"
        bad = []
        if b is None or k is None:
            bad.append("step missing on one side")
        else:
            so = "same" if b.stdout == k.stdout else "DIFF"
            se = "same" if b.stderr == k.stderr else "DIFF"
            if b.result != k.result:
                bad.append(f"result {b.result} vs {k.result}")
            if b.stdout != k.stdout:
                bad.append(f"stdout {b.stdout!r} vs {k.stdout!r}")
            if b.stderr != k.stderr:
                bad.append(f"stderr {b.stderr!r} vs {k.stderr!r}")
        rows.append((n, br, kr, so, se, "ok" if not bad else "DIFFERENT"))
        diffs += [f"step {n!r}: {d}" for d in bad]
    order_b = [s.name for s in bb.steps]
    order_k = [s.name for s in kn.steps]
    if order_b != order_k and not any("missing" in d for d in diffs):
        diffs.append(f"step order {order_b} vs {order_k}")
    for what, x, y in (("build result", bb.build_result, kn.build_result),
                       ("property myprop", bb.myprop, kn.myprop),
                       ("uploaded uploads/dl.txt", bb.upload, kn.upload)):
        rows.append((what, repr(x) if not isinstance(x, str) else x,
                     repr(y) if not isinstance(y, str) else y, "", "",
                     "ok" if x == y else "DIFFERENT"))
        if x != y:
            diffs.append(f"{what}: {x!r} vs {y!r}")
    widths = [min(max(len(str(r[i])) for r in rows), 40) for i in range(len(rows[0]))]
    table = ["  ".join(str(c)[:40].ljust(widths[i]) for i, c in enumerate(r)).rstrip() for r in rows]
    return table, diffs


def run_both(root: Path, worker: str = "kiln") -> tuple[SideResult, SideResult]:
    """The scenario on Buildbot, then on Kiln, both with `worker` ('kiln' or 'stock')."""
    sides = {}
    for side, fn in (("buildbot", run_buildbot), ("kiln", run_kiln)):
        d = root / side
        d.mkdir(parents=True)
        try:
            sides[side] = fn(d, worker)
        except Exception as e:
            sides[side] = SideResult(side, "-", [], None, None, error=f"{type(e).__name__}: {e}")
    return sides["buildbot"], sides["kiln"]


def main(argv: list[str]) -> int:
    worker = "kiln"
    if argv[:1] == ["--worker"] and len(argv) == 2 and argv[1] in harness.ALL_WORKERS:
        worker = argv[1]
    elif argv:
        print(f"usage: side_by_side.py [--worker {'|'.join(harness.ALL_WORKERS)}]", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="kiln-side-by-side-"))
    try:
        print(f"scenario {SCENARIO} with the {worker} worker")
        bb, kn = run_both(root, worker)
        for s in (bb, kn):
            if s.error:
                print(f"{s.side} side failed to run: {s.error}", file=sys.stderr)
        if bb.error or kn.error:
            return 2
        table, diffs = compare(bb, kn)
        print("\n".join(table))
        if diffs:
            print(f"\n{len(diffs)} difference(s):")
            for d in diffs:
                print(f"  - {d}")
            return 1
        print("\nno differences")
        return 0
    finally:
        if os.environ.get("KILN_INTEROP_KEEP"):
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main(sys.argv[1:]))
