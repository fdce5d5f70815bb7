"""The layers stay layers (ARCHITECTURE.md): the core package (tunekit/*.py and tunekit/families/) never imports the
command line (finetune.py, tunekit/cli.py, tunekit/__main__.py), the fixtures (tunekit/tiny/), the converters (tunekit/convert/) or the
benchmarks (bench/); converters never import fixtures, the command line or bench; the import graph of the package
(every import statement, also inside functions) has no cycle; and every module imports on its own."""
import ast
import subprocess
import sys

from conftest import ROOT

PACKAGE = ROOT / "tunekit"


def module_name(path):
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))} | {"finetune": ROOT / "finetune.py"}


def layer(name: str) -> str:
    if name in ("finetune", "tunekit.cli", "tunekit.__main__"):
        return "cli"
    if name.startswith("bench"):
        return "bench"
    for prefix, kind in (("tunekit.tiny", "fixture"), ("tunekit.convert", "converter")):
        if name == prefix or name.startswith(prefix + "."):
            return kind
    return "core"


def imports(name: str) -> set[str]:
    """The project modules (and bench) that `name` imports anywhere in its file."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")
                up = up[: len(up) - (node.level - 1)]
                base = ".".join(up + ([node.module] if node.module else []))
            # `from pkg import sub` names a submodule when pkg/sub.py exists, else an attribute of pkg
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for t in targets:
            if t.split(".")[0] == "bench":
                found.add("bench")
            while t and t not in MODULES:  # tunekit.convert.chatglm2.x -> tunekit.convert.chatglm2
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


GRAPH = {name: imports(name) for name in MODULES}
ALLOWED = {"core": {"core"}, "converter": {"core", "converter"}, "fixture": {"core", "converter", "fixture"},
           "cli": {"core", "cli"}}


def wrong_way(graph):
    return [(a, b) for a, targets in graph.items() for b in targets if layer(b) not in ALLOWED[layer(a)]]


def find_cycle(graph):
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt in graph and nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = "done"
        return None

    for name in sorted(graph):
        if name not in state and (found := visit(name, [name])):
            return found
    return None


def test_layers_import_only_downwards():
    assert not wrong_way(GRAPH), wrong_way(GRAPH)


def test_import_graph_has_no_cycle():
    assert find_cycle(GRAPH) is None, find_cycle(GRAPH)


def test_the_checks_can_fail():
    """The real graph was read (imports inside functions too), and the checks catch a cycle or a wrong-way import."""
    assert "tunekit.tasks" in GRAPH["tunekit.preflight"] and "tunekit.tiny" in GRAPH["tunekit.tiny.chatglm2"]
    cycle = find_cycle({**GRAPH, "tunekit.errors": {"tunekit.data"}})
    assert cycle and cycle[0] == cycle[-1] and {"tunekit.errors", "tunekit.data"} <= set(cycle), cycle
    assert wrong_way({"tunekit.model": {"tunekit.tiny"}, "tunekit.tiny": {"tunekit.model"}}) == [
        ("tunekit.model", "tunekit.tiny")]


def test_every_module_imports_on_its_own():
    """Each module in a process where no other project module was imported first (third-party ones stay cached)."""
    names = sorted(n for n in MODULES if not n.endswith("__main__") and n != "finetune") + ["finetune"]
    script = (f"import importlib, sys\nsys.path.insert(0, {str(ROOT)!r})\n"
              f"for name in {names!r}:\n"
              "    for m in [m for m in sys.modules if m == 'finetune' or m.split('.')[0] == 'tunekit']:\n"
              "        del sys.modules[m]\n"
              "    importlib.import_module(name)\n"
              f"print('imported', {len(names)})\n")
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and f"imported {len(names)}" in r.stdout, r.stderr[-3000:]


def test_the_docs_name_every_core_module_and_the_readme_stays_short():
    text = (ROOT / "ARCHITECTURE.md").read_text()
    core = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    core += sorted(f"{p.stem}.py" for p in (PACKAGE / "families").glob("*.py") if p.name != "__init__.py")
    missing = [name for name in core if f"`{name}`" not in text and f"{name.removesuffix('.py')}.py" not in text]
    assert not missing, missing
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250
