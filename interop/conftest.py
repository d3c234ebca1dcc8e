"""Shared pytest glue: on a failure, show the tails of the master's and workers' logs."""
import pytest

import harness


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and harness.ACTIVE:
        for obj in list(harness.ACTIVE)[-4:]:
            if isinstance(obj, harness.Master):
                rep.sections.append((f"master twistd.log tail ({obj.basedir})", obj.log_tail(60)))
            else:
                rep.sections.append((f"{obj.name} worker log tail ({obj.log_path})", obj.log_tail(40)))
