"""The package's layout as the README describes it: every module it names exists, imports have no cycle, and no
import runs back up the pipeline's floors; the test modules conftest schedules first exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "controller"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


# The floors, bottom first: a module imports only from its own floor and the floors below. Plumbing and the
# vocabulary at the bottom, then the stages in the order data flows (Git, secrets, the check run, what differs,
# the record, the run that drives them), then what people and other programs see, and the entry points.
FLOORS = (
    {"vocabulary", "errors", "clock", "schema", "config", "process", "reaper", "guard", "lock", "interrupt", "memo",
     "mounts"},
    {"source"}, {"secrets"}, {"ansible"}, {"verify"}, {"state"}, {"run"}, {"report"}, {"web"}, {"daemon"},
    {"cli"},
)


def imports_at_load(path: Path, modules: set[str], *, in_functions: bool = False) -> set[str]:
    """The package modules ``path`` imports when it is loaded (``in_functions``: or when its functions run);
    never those imported only for type checking."""
    found: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        nested = in_functions or not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        for inner in ast.walk(node) if nested else ():
            if isinstance(inner, ast.ImportFrom) and inner.module and inner.level == 0:
                names = [f"{inner.module}.{alias.name}" for alias in inner.names]
                found.update(n for n in [inner.module, *names] if n in modules)
            elif isinstance(inner, ast.Import):
                found.update(alias.name for alias in inner.names if alias.name in modules)
    return found


def test_every_module_the_readme_names_exists() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### How a reconcile works"):readme.index("## Layout")]
    named = set(re.findall(r"`(controller/[\w/]+\.py)`", section))
    assert len(named) >= 8 and [n for n in sorted(named) if not (ROOT / n).is_file()] == []
    packages = {p.relative_to(ROOT).parent.as_posix() for p in PACKAGE.glob("*/__init__.py")}
    assert [p for p in sorted(packages) if f"`{p}/`" not in section] == []  # every stage is described
    # a bare module name in a stage's paragraph is a module of that stage (or of the top level)
    for paragraph in section.split("\n- ")[1:]:
        stage = re.match(r"\*\*`(controller/\w+)/`", paragraph)
        for name in re.findall(r"`((?:\w+/)?\w+\.py)`", paragraph):
            where = [ROOT / name, ROOT / "controller" / name] + ([ROOT / stage.group(1) / name] if stage else [])
            assert any(path.is_file() for path in where), (paragraph[:40], name)


def test_the_package_imports_have_no_cycle() -> None:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: imports_at_load(path, set(files)) - {name} for name, path in files.items()}
    done: set[str] = set()

    def visit(name: str, trail: tuple[str, ...]) -> None:
        assert name not in trail, " -> ".join([*trail[trail.index(name):], name])
        if name in done:
            return
        for imported in sorted(graph[name]):
            visit(imported, (*trail, name))
        done.add(name)

    for name in sorted(graph):
        visit(name, ())


def floor(module: str) -> int:
    """The floor of a package module: its stage's (``controller.run.cycle``: run's) or its own at the top level."""
    part = module.split(".")[1] if "." in module else ""
    found = [number for number, names in enumerate(FLOORS) if part in names]
    assert found, f"{module} is on no floor: add its stage or module to FLOORS (and to the README's map)"
    return found[0]


def test_no_import_runs_back_up_the_floors() -> None:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE or p.stem != "__init__"}
    upward = [f"{name} -> {imported}" for name, path in sorted(files.items())
              for imported in sorted(imports_at_load(path, set(files), in_functions=True))
              if floor(imported) > floor(name)]
    assert upward == []


def test_the_modules_scheduled_first_exist() -> None:
    from tests.conftest import LONGEST

    assert [name for name in LONGEST if not (ROOT / "tests" / f"{name}.py").exists()] == []
