"""The search stage's modules import one another one way: no circle among `stagetune/stages/`,
`stagetune/search/`, `flows/search.py` and `stagetune/worker.py` (every import counted, those under
`TYPE_CHECKING` too)."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FILES = [
    *sorted((REPO / "stagetune" / "stages").glob("*.py")),
    *sorted((REPO / "stagetune" / "search").glob("*.py")),
    REPO / "flows" / "search.py",
    REPO / "stagetune" / "worker.py",
]


def _module(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts)


def _graph() -> dict[str, set[str]]:
    modules = {_module(path): path for path in FILES if path.name != "__init__.py"}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            graph[name].update(target for target in targets if target in modules and target != name)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> list[str] | None:
        if name in path:
            return [*path[path.index(name) :], name]
        if name in done:
            return None
        for target in sorted(graph[name]):
            found = visit(target, [*path, name])
            if found:
                return found
        done.add(name)
        return None

    for name in sorted(graph):
        found = visit(name, [])
        if found:
            return found
    return None


def test_the_search_modules_import_one_another_without_a_circle() -> None:
    graph = _graph()
    assert "stagetune.stages.search_session" in graph["stagetune.stages.search_loop"]  # the graph is read
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_cycle_finder_finds_a_circle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
