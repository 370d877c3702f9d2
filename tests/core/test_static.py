"""Checks of the code and the suite that no unit test would catch: a name used but never defined (say an
import lost in a refactor) fails only when its line runs, which may be a long pipeline stage; a test
file split over workers builds its fixtures twice."""
import ast
import os
from pathlib import Path

from pyflakes import checker, messages

ROOT = Path(__file__).resolve().parents[2]
UNDEFINED = (messages.UndefinedName, messages.UndefinedLocal, messages.UndefinedExport)


def test_no_undefined_names_in_the_project():
    found = []
    for folder in ("modules", "pipelines", "benchmarks", "tests"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            found += [f"{path.relative_to(ROOT)}:{m.lineno}: {m.message % m.message_args}"
                      for m in checker.Checker(tree, filename=str(path)).messages if isinstance(m, UNDEFINED)]
    assert not found, "\n".join(found)


def test_a_test_file_runs_on_one_worker(request):
    """`make test` (--dist loadgroup) keeps each file's tests on one worker, so a module's fixtures (a
    tiny pipeline's `dvc repro`) run once; pytest 9.2 broke that silently (requirements-dev.txt)."""
    if request.config.getoption("dist", "no") == "no" and not os.environ.get("PYTEST_XDIST_WORKER"):
        return  # a plain run has one process: nothing to group
    assert request.node.nodeid.endswith("@tests/core/test_static.py")
