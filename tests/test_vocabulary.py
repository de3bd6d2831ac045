"""One vocabulary: no status, state, policy, trigger or outcome is spelled as a string outside vocabulary.py."""

from __future__ import annotations

import ast
from pathlib import Path

from controller.vocabulary import Action, HostState, Kind, Mode, Outcome, Phase, Policy, TaskStatus, Trigger

PACKAGE = Path(__file__).resolve().parent.parent / "controller"
WORDS = {str(m) for enum in (TaskStatus, HostState, Outcome, Policy, Trigger, Kind, Mode, Phase, Action) for m in enum}
# names whose value is one of the vocabulary's words: a literal given to one is a word spelled by hand
NAMED = {"status", "state", "policy", "trigger", "mode", "kind", "phase", "outcome"}


def spelled(tree: ast.AST) -> list[tuple[int, str]]:
    """Where a vocabulary word is compared, passed, returned as a status, or made a default, as a literal."""
    found: list[tuple[int, str]] = []

    def words(node: ast.AST) -> list[str]:
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in WORDS:
            return [node.value]
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return [w for element in node.elts for w in words(element)]
        return []

    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for side in (node.left, *node.comparators):
                found += [(node.lineno, w) for w in words(side)]
        elif isinstance(node, ast.keyword) and node.arg in NAMED:
            found += [(node.value.lineno, w) for w in words(node.value)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None \
                and node.target.id in NAMED:
            found += [(node.lineno, w) for w in words(node.value)]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "with_status":
            found += [(node.lineno, w) for arg in node.args for w in words(arg)]
    return found


def test_no_status_or_state_is_spelled_outside_the_vocabulary() -> None:
    offences = [f"{path.relative_to(PACKAGE.parent)}:{line}: {word!r}"
                for path in sorted(PACKAGE.rglob("*.py")) if path.name != "vocabulary.py"
                for line, word in spelled(ast.parse(path.read_text()))]
    assert offences == [], "use the enum of controller/vocabulary.py:\n" + "\n".join(offences)


def test_the_check_finds_what_it_looks_for() -> None:
    sample = ast.parse('if host.status == "changed": pass\nx = Result(status="ok")\n'
                       'y = a in ("failed", "unreachable")\nr.with_status("drifted")\n'
                       'class A:\n    policy: str = "apply"\n')
    assert sorted(word for _, word in spelled(sample)) == ["apply", "changed", "drifted", "failed", "ok", "unreachable"]
