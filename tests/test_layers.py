"""The package's layering, read from the source with ast (every import, also those inside functions).

Layers, bottom to top: base (errors, paths, labels, config, defaults, experiment, artifacts, folds,
lineage, metrics, presets) -> data -> models -> training -> second_level -> reporting -> the top
(stages, cli, launch, bundle, serve). A module imports only from its own layer or those below,
reporting never imports second_level, and the only import cycle is the model registry's (registry.py
imports the model modules so that they register, and they import its decorator).
"""
import ast
import io
import tokenize
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "rakuten"

BASE = {"rakuten", "rakuten.errors", "rakuten.paths", "rakuten.labels", "rakuten.config", "rakuten.artifacts",
        "rakuten.defaults", "rakuten.experiment", "rakuten.folds", "rakuten.lineage", "rakuten.metrics",
        "rakuten.presets", "rakuten.safe_io"}
SUBPACKAGES = {"data": 1, "models": 2, "training": 3, "second_level": 4, "reporting": 5}
TOP = {"rakuten.stages", "rakuten.cli", "rakuten.launch", "rakuten.bundle", "rakuten.serve"}
LAYER_NAMES = ["base", "data", "models", "training", "second_level", "reporting", "top"]


def modules() -> dict[str, Path]:
    out = {}
    for f in PACKAGE.rglob("*.py"):
        name = ".".join(f.relative_to(SRC).with_suffix("").parts)
        out[name[:-len(".__init__")] if name.endswith(".__init__") else name] = f
    return out


def layer(mod: str) -> int:
    if mod in BASE:
        return 0
    if mod in TOP:
        return 6
    parts = mod.split(".")
    if len(parts) > 1 and parts[1] in SUBPACKAGES:
        return SUBPACKAGES[parts[1]]
    raise AssertionError(f"{mod}: no layer assigned; add it to tests/test_layers.py")


def imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the package modules it imports (``from rakuten.x import y`` counts as rakuten.x.y when
    that is a module, else as rakuten.x)."""
    out = {}
    for name, f in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                    and node.module.split(".")[0] == "rakuten":
                for a in node.names:
                    full = f"{node.module}.{a.name}"
                    deps.add(full if full in mods else node.module)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.split(".")[0] == "rakuten"}
        out[name] = {d for d in deps if d in mods and d != name}
    return out


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_module_imports_from_a_layer_above_its_own():
    mods = modules()
    bad = [f"{m} ({LAYER_NAMES[layer(m)]}) imports {d} ({LAYER_NAMES[layer(d)]})"
           for m, deps in sorted(imports(mods).items()) for d in sorted(deps) if layer(d) > layer(m)]
    assert bad == [], "\n".join(bad)


def test_reporting_never_imports_second_level():
    graph = imports(modules())
    bad = [f"{m} imports {d}" for m, deps in sorted(graph.items()) if m.startswith("rakuten.reporting")
           for d in sorted(deps) if d.startswith("rakuten.second_level")]
    assert bad == [], "\n".join(bad)


def test_the_only_import_cycle_is_the_model_registry():
    found = cycles(imports(modules()))
    others = [sorted(c) for c in found if "rakuten.models.registry" not in c]
    assert others == [], others
    registry = [c for c in found if "rakuten.models.registry" in c]
    assert all(m.startswith("rakuten.models.") for c in registry for m in c), registry


def test_the_checker_sees_violations():
    """The three checks above would fail on a graph that breaks them (so they are not vacuous)."""
    assert layer("rakuten.training.fold") < layer("rakuten.second_level.fusion") < layer("rakuten.stages")
    graph = {"rakuten.a": {"rakuten.b"}, "rakuten.b": {"rakuten.c"}, "rakuten.c": {"rakuten.a"}, "rakuten.d": set()}
    assert cycles(graph) == [{"rakuten.a", "rakuten.b", "rakuten.c"}]
    real = imports(modules())
    assert "rakuten.training.engine" in real["rakuten.training.fold"]       # top-level import seen
    assert "rakuten.second_level.tuning" in real["rakuten.stages"]          # function-level import seen


def unexplained_local_imports(text: str) -> list[int]:
    """Line numbers of the imports inside a function body that say nowhere why they are local: a comment
    on the import's line(s), on the line directly above, or above the first of a run of consecutive
    local import statements (one comment may cover a group; blank lines may separate its sections)."""
    comments = {tok.start[0] for tok in tokenize.generate_tokens(io.StringIO(text).readline)
                if tok.type == tokenize.COMMENT}
    lines = text.splitlines()

    def comment_only(n: int) -> bool:
        return n in comments and lines[n - 1].lstrip().startswith("#")

    bad = []

    def scan(body: list[ast.stmt], in_function: bool) -> None:
        explained = False      # the previous statement was an explained local import
        for st in body:
            if isinstance(st, (ast.Import, ast.ImportFrom)) and in_function:
                own = any(n in comments for n in range(st.lineno, st.end_lineno + 1)) \
                    or comment_only(st.lineno - 1)
                explained = own or explained
                if not explained:
                    bad.append(st.lineno)
                continue
            explained = False
            inner = in_function or isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef))
            for field in ("body", "orelse", "finalbody"):
                if isinstance(getattr(st, field, None), list):
                    scan(getattr(st, field), inner)
            for h in getattr(st, "handlers", []) + getattr(st, "cases", []):
                scan(h.body, inner)

    scan(ast.parse(text).body, False)
    return bad


def test_every_function_level_import_says_why():
    """Imports go at the top of a module; one inside a function is kept there only when it is heavy
    (torch, transformers, ...), optional (ray, cleanlab, ...) or breaks a cycle, and a comment says which."""
    bad = []
    for f in sorted(SRC.rglob("*.py")):
        bad += [f"src/{f.relative_to(SRC).as_posix()}:{n}" for n in unexplained_local_imports(f.read_text())]
    assert bad == [], f"{len(bad)} function-level imports without a comment saying why:\n" + "\n".join(bad)


def test_the_local_import_check_sees_violations():
    src = ("import os\n"
           "def f():\n"
           "    import json\n"                          # 3: no reason
           "    # heavy: torch\n"
           "    import torch\n"
           "    import torch.nn\n"                      # group under one comment
           "\n"
           "    from rakuten.x import y\n"               # still the group
           "    x = 1\n"
           "    import re\n"                            # 8: the group ended
           "    import sys  # optional: nothing\n"
           "    if x:\n"
           "        from a import (b,\n"                # 11
           "                       c)\n"
           "    class K:\n"
           "        def g(self):\n"
           "            import csv\n")                  # 15
    assert unexplained_local_imports(src) == [3, 10, 13, 17]
