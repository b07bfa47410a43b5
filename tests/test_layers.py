"""ctxlab's modules import only downward through its layers (instruments at the bottom, presentation at the top).

Every import counts, including those inside functions: a lazy import still ties a technique to its
harness. Modules of one layer may import each other (the package has no cycles: tested below).
"""
from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "ctxlab"

# Lowest first. A module missing from this table fails the test, so a new file must choose its layer.
LAYERS: dict[str, int] = {
    # 1 instruments: measurement, the validated config, atomic writes, the book's files, the one search
    "measure": 1, "config": 1, "hf_config": 1, "command": 1, "atomic": 1, "book_files": 1, "search": 1,
    # 2 techniques: each one idea, none importing another's harness
    "attention": 2, "attention_lse": 2, "positions": 2, "kvcache": 2, "kvcache_quant": 2, "kvcache_window": 2, "clipping": 2,
    "packing": 2, "tasks": 2,
    # 3 the model
    "model": 3, "recurrent": 3, "hf_weights": 3,
    # 4 training, evaluation and cost models
    "train": 4, "evaluate": 4, "flops": 4, "attention_io": 4, "memory_model": 4, "planner": 4, "latency": 4,
    "serving": 4, "model_states": 4,
    # 5 parallelism
    "parallel": 5,
    # 6 benchmarks and adapters to torch-native APIs
    "bench": 6,
    # 7 applications
    "extend": 7, "extend_retrieval": 7, "casestudy": 7, "gpucheck": 7, "gpucheck_parallel": 7, "gpu_results": 7,
    # 8 presentation
    "plots": 8, "widgets": 8,
}


def module_name(path: pathlib.Path) -> str:
    """'ctxlab.parallel.ring' for ctxlab/parallel/ring.py; 'ctxlab.bench' for ctxlab/bench/__init__.py."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int | None:
    """The layer of a ctxlab module: its top-level name's (a subpackage has one layer); None for ctxlab itself."""
    parts = module.split(".")
    if parts[0] != "ctxlab" or len(parts) == 1:
        return None
    return LAYERS.get(parts[1], -1)


def imports_of(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, imported ctxlab module) for every import in ``source``, relative ones resolved."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "ctxlab"]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            if target.split(".")[0] != "ctxlab":
                continue
            # "from . import comms" imports a module; "from .bench import median_ms" imports from one
            found += [(node.lineno, target)] if node.module else [(node.lineno, f"{target}.{a.name}")
                                                                  for a in node.names]
    return found


def upward_imports(path: pathlib.Path, source: str | None = None) -> list[str]:
    """Each import of ``path`` that reaches a higher layer, as 'file:line: a (layer) imports b (layer)'."""
    source = path.read_text() if source is None else source
    module = module_name(path)
    mine = layer_of(module)
    if mine is None:  # ctxlab/__init__.py: the package's front door re-exports from any layer
        return []
    bad = []
    for line, target in imports_of(source, module, path.name == "__init__.py"):
        theirs = layer_of(target)
        if theirs is not None and theirs > mine:
            bad.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {module} (layer {mine}) imports "
                       f"{target} (layer {theirs})")
    return bad


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer():
    missing = sorted({module_name(p).split(".")[1] for p in SOURCES if layer_of(module_name(p)) == -1})
    assert not missing, f"add these modules to LAYERS in tests/test_layers.py: {missing}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_only_downward(path):
    bad = upward_imports(path)
    assert not bad, "\n".join(bad)


def test_an_upward_import_is_caught():
    """The check itself: a technique that borrows the bench's timer is reported, lazy import or not."""
    source = "import torch\n\n\ndef f():\n    from .bench import median_ms\n    return median_ms\n"
    assert upward_imports(PACKAGE / "attention.py", source) == [
        "ctxlab/attention.py:5: ctxlab.attention (layer 2) imports ctxlab.bench (layer 6)"]
    assert upward_imports(PACKAGE / "parallel" / "ring.py", "from ..config import positive_int\n") == []
    assert upward_imports(PACKAGE / "bench" / "__init__.py", "from ..casestudy import run\n") == [
        "ctxlab/bench/__init__.py:1: ctxlab.bench (layer 6) imports ctxlab.casestudy (layer 7)"]


def test_no_import_cycles():
    graph = {module_name(p): {t for _, t in imports_of(p.read_text(), module_name(p), p.name == "__init__.py")}
             for p in SOURCES}
    names = set(graph)
    graph = {m: {t if t in names else t.rsplit(".", 1)[0] for t in ts} & names - {m} for m, ts in graph.items()}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(t):] + [t]) if t in path
                                     else f"import cycle through {t}")
            if t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
