"""The rooms of `tracer/` and the imports between them, read from the code (ast; imports inside functions
included, those under `TYPE_CHECKING` left out), for docs/architecture.md.

    .venv/bin/python docs/architecture_graph.py docs/generated/architecture.png

Prints a Markdown table of the rooms (their modules and the rooms they import, with counts) and draws the
room graph as a PNG. The rules themselves are held by tests/test_architecture.py.
"""

from __future__ import annotations

import ast
import sys
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

TRACER = Path(__file__).resolve().parent.parent / "tracer"
ORDER = ("core", "meta", "devices", "engine", "analysis", "facade", "outputs", "studies", "real")
LAYER = {"core": 0, "meta": 1, "devices": 2, "engine": 3, "analysis": 3, "facade": 4, "outputs": 4}
LAYER |= {"studies": 5, "real": 5}


def room_of(module: str) -> str:
    first = module.split(".")[0]
    return first if first in ORDER else "facade"


def module_of(path: Path) -> list[str]:
    return [p for p in path.relative_to(TRACER).with_suffix("").parts if p != "__init__"]


def type_checking_lines(tree: ast.Module) -> set[int]:
    """The lines of imports under `if TYPE_CHECKING:` (they do not count)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in node.body:
                lines.update(range(inner.lineno, (inner.end_lineno or inner.lineno) + 1))
    return lines


def targets(path: Path) -> list[str]:
    """The tracer modules (first component: the room) a file imports, relative imports resolved."""
    tree = ast.parse(path.read_text())
    skip = type_checking_lines(tree)
    here = module_of(path)
    package = here if path.name == "__init__.py" else here[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level and node.lineno not in skip:
            base = package[: len(package) - node.level + 1]
            parts = [*base, *(node.module.split(".") if node.module else [])]
            found += [".".join([*parts, a.name]) for a in node.names] if not parts else [".".join(parts)]
    return found


def room_edges() -> tuple[dict[str, list[str]], Counter[tuple[str, str]]]:
    modules: dict[str, list[str]] = {room: [] for room in ORDER}
    edges: Counter[tuple[str, str]] = Counter()
    for path in sorted(TRACER.rglob("*.py")):
        name = ".".join(module_of(path))
        src = room_of(name) if name else "facade"
        modules[src].append(name or "__init__")
        for target in targets(path):
            dst = room_of(target)
            if dst != src:
                edges[(src, dst)] += 1
    return modules, edges


def table(modules: dict[str, list[str]], edges: Counter[tuple[str, str]]) -> str:
    rows = ["| room | modules | imports (count of import statements) |", "|---|---|---|"]
    for room in ORDER:
        names = ", ".join(sorted(m.split(".", 1)[1] if "." in m else "__init__" for m in modules[room]))
        out = ", ".join(f"{d} ({n})" for (s, d), n in sorted(edges.items()) if s == room) or "nothing"
        rows.append(f"| `{room}` | {names} | {out} |")
    return "\n".join(rows)


def draw(edges: Counter[tuple[str, str]], out: Path) -> None:
    columns: dict[int, list[str]] = {}
    for room in ORDER:
        columns.setdefault(LAYER[room], []).append(room)
    pos = {
        r: (layer * 2.2, -i * 1.4 - 0.7 * (len(rs) == 1))
        for layer, rs in columns.items()
        for i, r in enumerate(rs)
    }
    fig, ax = plt.subplots(figsize=(12, 3.6))
    for (src, dst), n in edges.items():
        (x0, y0), (x1, y1) = pos[src], pos[dst]
        ax.annotate(
            "",
            xy=(x1 + 0.45, y1),
            xytext=(x0 - 0.45, y0),
            arrowprops={"arrowstyle": "->", "color": "#777", "lw": 0.6 + 0.08 * min(n, 25)},
        )
    for room, (x, y) in pos.items():
        ax.text(x, y, room, ha="center", va="center", fontsize=11, bbox={"boxstyle": "round", "fc": "#eef"})
    ax.set_xlim(-0.8, max(x for x, _ in pos.values()) + 0.8)
    ax.set_ylim(-2.2, 0.6)
    ax.axis("off")
    title = "tracer/: each arrow points from a room to one it imports (width: how many imports)"
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    modules, edges = room_edges()
    if len(sys.argv) > 1:
        draw(edges, Path(sys.argv[1]))
    print(table(modules, edges))


if __name__ == "__main__":
    main()
