"""The code a pipeline stage runs: the import closure of its entry modules, as repository files.

``dvc.yaml`` (rendered by :mod:`senseflow.pipeline`) lists these files as each stage's code
deps, so editing any module a stage can execute reruns that stage, and editing one it never
imports does not. The closure follows every ``import`` statement of the repository's own
packages (``senseflow``, ``eval``) wherever it appears, function bodies included: a lazy import
still runs (except in a package's ``__getattr__`` hook, see :func:`_walk`). Third-party
imports are not followed (their versions are the environment's, pinned in ``constraints.txt``).

Entry points that only dispatch (``senseflow/cli.py``, ``senseflow/stages.py``) are *glue*:
their own file is a dep, and only their module-level imports are followed, because each of
their functions lazily imports the work of one stage only; the stage lists that work as its
entries. ``tests/test_pipeline_render.py`` checks that every lazy import of a glue function is
inside the closure of the stage that calls it.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("senseflow", "eval")


def module_file(module: str, root: Path = ROOT) -> Path | None:
    """``senseflow.world.prompts`` -> its ``.py`` file (a package: its ``__init__.py``); None if not ours."""
    if module.split(".")[0] not in PACKAGES:
        return None
    base = root.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """Module names one import statement may load (``from a import b``: ``a`` and ``a.b``)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:  # relative: resolved against this module's package
        package = module.split(".") if is_package else module.split(".")[:-1]
        base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    return [base, *(f"{base}.{a.name}" for a in node.names)]


def _with_parents(module: str) -> list[str]:
    """Importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` first."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _walk(tree: ast.AST):
    """Every node, except the bodies of module ``__getattr__`` hooks.

    A package's ``__getattr__`` (``senseflow.load_student``) imports only when that attribute is
    read, which the suite's own modules never do (they import from the submodule).
    """
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if not (isinstance(child, ast.FunctionDef) and child.name == "__getattr__"):
                todo.append(child)


@cache
def direct_imports(path: Path, root: Path = ROOT, *, module_level_only: bool = False) -> frozenset[str]:
    """Our modules imported by the file ``path`` (every statement, or only the module-level ones)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    module = _module_name(path, root)
    nodes = tree.body if module_level_only else _walk(tree)
    found = set()
    for node in nodes:
        for name in _imported(node, module, path.name == "__init__.py"):
            for m in _with_parents(name):
                if module_file(m, root) is not None:
                    found.add(m)
    return frozenset(found)


def closure(entries: list[str], glue: tuple[str, ...] = (), root: Path = ROOT) -> list[Path]:
    """Repository files run by a stage whose work is ``entries`` and whose dispatch is ``glue``.

    ``entries``: module names followed through every import. ``glue``: module names whose own
    file counts and whose module-level imports are followed. Returns sorted absolute paths.
    """
    files: set[Path] = set()
    todo = [m for e in entries for m in _with_parents(e)]
    for g in glue:
        path = module_file(g, root)
        if path is None:
            raise ValueError(f"glue module {g!r} is not a file under {root}")
        files.add(path)
        todo += [*_with_parents(g)[:-1], *direct_imports(path, root, module_level_only=True)]
    seen: set[str] = set()
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        path = module_file(m, root)
        if path is None:
            raise ValueError(f"stage entry {m!r} is not a module of {', '.join(PACKAGES)}")
        files.add(path)
        todo += direct_imports(path, root)
    return sorted(files)


def function_imports(module: str, function: str, root: Path = ROOT) -> set[str]:
    """Our modules imported inside ``module.function``'s body (its lazy imports)."""
    path = module_file(module, root)
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == function:
            found = set()
            for sub in ast.walk(node):
                for name in _imported(sub, module, path.name == "__init__.py"):
                    found |= {m for m in _with_parents(name) if module_file(m, root) is not None}
            return found
    raise ValueError(f"{module} has no function {function!r}")


def as_deps(files: list[Path], root: Path = ROOT) -> list[str]:
    """``files`` as DVC deps relative to ``root``, a whole package folder listed as the folder.

    A folder is listed when every module under it is in ``files`` (``.dvcignore`` skips its
    ``__pycache__``); the rest file by file.
    """
    chosen = set(files)
    out: list[str] = []
    covered: set[Path] = set()
    for folder in sorted({p.parent for p in chosen}, key=lambda d: len(d.parts)):
        if folder == root or any(folder.is_relative_to(c) for c in covered):
            continue
        modules = {f for f in folder.rglob("*.py") if "__pycache__" not in f.parts}
        if folder.parent != root and modules <= chosen:
            covered.add(folder)
            out.append(str(folder.relative_to(root)))
    # an empty __init__.py runs nothing (DVC warns about empty deps); once it holds code, the
    # render changes and the preflight stage, which tracks all code, asks for a new render
    out += [
        str(p.relative_to(root))
        for p in sorted(chosen)
        if not any(p.is_relative_to(c) for c in covered) and p.stat().st_size
    ]
    return sorted(out)


def module_constant(module: str, name: str, root: Path = ROOT):
    """The literal value of ``module.name`` (``NAME = {...}``), read from source without importing it."""
    path = module_file(module, root)
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise ValueError(f"{path}: no literal {name} = ...")
