"""The package's modules import each other without a circle: the import graph of `localdpo` is acyclic.

An edge a -> b is any import of b written in a's source (at the top, or inside a function: a lazy import
still ties the two modules together), plus b's parent packages that are not a's own ancestors (importing
`x.y.z` runs `x/y/__init__.py` first, and a package's `__init__` may import its modules back). Imports under
`if TYPE_CHECKING:` never run and are left out.
"""

import ast
from pathlib import Path

import localdpo

PACKAGE_DIR = Path(localdpo.__file__).parent


def package_modules(package_dir: Path = PACKAGE_DIR) -> dict[str, Path]:
    """Dotted module name -> source file, for every module and package under `package_dir`."""
    modules = {}
    for path in package_dir.rglob("*.py"):
        parts = [package_dir.name, *path.relative_to(package_dir).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _runtime_nodes(tree: ast.AST):
    """Every node of `tree` except the bodies of `if TYPE_CHECKING:` blocks."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            yield from (n for child in node.orelse for n in [child, *_runtime_nodes(child)])
            continue
        yield node
        yield from _runtime_nodes(node)


def _imported_names(node: ast.AST, module: str, is_package: bool, modules: dict[str, Path]) -> list[str]:
    """Dotted names `node` imports: `from x import y` is `x.y` when that is a module, else `x` (a name in it)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:
        anchor = module.split(".") if is_package else module.split(".")[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join([*anchor, base] if base else anchor)
    return [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the package modules it imports (see the module docstring for what counts)."""

    def owner(name: str) -> str | None:  # the module a dotted name lives in: `x.y.f` -> `x.y`
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {name: set() for name in modules}
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            for name in _imported_names(node, module, is_package, modules):
                target = owner(name)
                if target is None or target == module:
                    continue
                graph[module].add(target)
                parts = target.split(".")
                for cut in range(1, len(parts)):
                    parent = ".".join(parts[:cut])
                    if parent in modules and not (module == parent or module.startswith(parent + ".")):
                        graph[module].add(parent)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle `[a, b, ..., a]`, or None when the graph is acyclic (iterative depth-first search)."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path, on_path, stack = [start], {start}, [iter(sorted(graph[start]))]
        while stack:
            following = next(stack[-1], None)
            if following is None:  # every import of path[-1] explored: no circle through it
                finished = path.pop()
                on_path.discard(finished)
                done.add(finished)
                stack.pop()
                continue
            if following in on_path:
                return [*path[path.index(following) :], following]
            if following not in done:
                path.append(following)
                on_path.add(following)
                stack.append(iter(sorted(graph[following])))
    return None


def test_the_package_has_no_import_circle():
    cycle = find_cycle(import_graph(package_modules()))
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_a_circle_is_found_and_named():
    """The check itself: a written circle (through a package `__init__` and a lazy import) is caught."""
    graph = {"p": {"p.a"}, "p.a": {"p.b"}, "p.b": {"p"}, "q": set()}
    assert find_cycle(graph) == ["p", "p.a", "p.b", "p"]
    assert find_cycle({"p": {"p.a"}, "p.a": set(), "p.b": {"p.a"}}) is None


def test_edges_cover_lazy_imports_and_parent_packages_but_not_type_checking(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from pkg.sub.leaf import f\n")
    (package / "sub" / "leaf.py").write_text("def f():\n    from pkg import top\n")
    (package / "top.py").write_text(
        "from typing import TYPE_CHECKING\nfrom .sub.leaf import f\nif TYPE_CHECKING:\n    from pkg import other\n"
    )
    (package / "other.py").write_text("from . import top\n")
    graph = import_graph(package_modules(package))
    assert graph["pkg.sub.leaf"] == {"pkg.top"}  # lazy import; `pkg` is its own ancestor
    assert graph["pkg.top"] == {"pkg.sub.leaf", "pkg.sub"}  # importing pkg.sub.leaf runs pkg/sub/__init__
    assert graph["pkg.other"] == {"pkg.top"}
    cycle = find_cycle(graph)
    assert cycle[0] == cycle[-1] and set(cycle) == {"pkg.sub", "pkg.sub.leaf", "pkg.top"}


def concern_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The same graph between the top-level entries of `localdpo` (its concerns, docs/architecture.md)."""
    concerns: dict[str, set[str]] = {}
    for module, targets in graph.items():
        if "." not in module:
            continue  # `localdpo/__init__.py` re-exports the public API from the concerns
        source = module.split(".")[1]
        concerns.setdefault(source, set())
        for target in targets:
            if "." in target and target.split(".")[1] != source:
                concerns[source].add(target.split(".")[1])
    return concerns


def test_the_concerns_import_each_other_without_a_circle():
    """One floor above modules: no top-level package or module of localdpo depends on itself through others."""
    cycle = find_cycle(concern_graph(import_graph(package_modules())))
    assert cycle is None, "circle between concerns: " + " -> ".join(cycle)


def test_concern_graph_lifts_module_edges():
    graph = {"localdpo": {"localdpo.a.x"}, "localdpo.a.x": {"localdpo.b"}, "localdpo.b": {"localdpo.a.y"}}
    assert concern_graph(graph) == {"a": {"b"}, "b": {"a"}}
    assert find_cycle(concern_graph(graph)) == ["a", "b", "a"]
