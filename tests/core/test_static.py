"""Static checks that no unit test would catch: a name used but never defined (say an import lost in
a refactor) fails only when its line runs, which may be a long pipeline stage."""
import ast
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
