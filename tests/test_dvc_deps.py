"""dvc.yaml's `deps:` cover the code each stage runs, so a code change cannot leave outputs stale.

For every stage (`foreach`/`matrix` stages expanded) the module its `cmd` runs with `python -m`
is parsed with `ast`, never imported, and every import of a project module is followed
(imports inside functions too, relative imports, the `__init__.py` of each package on the way)
to the import closure: the project files `dvc repro` executes for that stage. Each file in it
must be a dep of the stage (a directory dep covers the files under it) unless EXEMPT says why a
change there cannot change any output. Only files under the project's packages count: `src/*/`
packages and packages at the repository root (`stages/`); third-party imports are not followed.
"""

from __future__ import annotations

import ast
import itertools
import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

# Project files a stage runs that need not be its deps: a change to one cannot change any
# stage output. Each must hold no logic (docstrings and body-less classes only; checked by
# test_exempt_files_hold_no_logic), so an edit that gives one logic ends its exemption.
# Judged and NOT exempt, so they must be deps of every stage that runs them:
#   src/livecellseg/io.py       write_json/write_csv choose the bytes of outputs (indent,
#                               trailing newline, CSV header and dialect); atomic_dir decides
#                               what an output directory ends up holding.
#   src/livecellseg/__init__.py its __version__ is written into every checkpoint (the
#                               "versions" record of models/*.pt), so it changes their bytes.
#   stages/common.py            run_stage loads the params every stage computes from
#                               (`--params`, default params.yaml) and hands them to main();
#                               it is the file shared setup (seeds, threads) would land in.
EXEMPT: dict[str, str] = {
    # the stages package's docstring only; `python -m stages.X` imports it and nothing runs
    "stages/__init__.py": "docstring only",
    # exception classes only: messages are written at the raise sites (walked modules), every
    # except clause catching them re-raises or exits 1, and a failed stage leaves neither
    # outputs (atomic writes) nor a dvc.lock entry, so they only shape how a failure reads
    "src/livecellseg/errors.py": "exception classes only",
}

_TEMPLATE = re.compile(r"\$\{\s*([\w.-]+)\s*\}")
_MODULE = re.compile(r"(?:^|\s)-m\s+([A-Za-z_][\w.]*)")


# ---------------------------------------------------------------------------------- walker


def project_packages(root: Path) -> dict[str, Path]:
    """Top-level packages of the project by name: those at the root (found first on
    `python -m`'s path) and those under src/ (installed from there)."""
    packages: dict[str, Path] = {}
    for base in (root, root / "src"):
        for init in sorted(base.glob("*/__init__.py")):
            packages.setdefault(init.parent.name, init.parent)
    return packages


def _module_file(name: str, packages: dict[str, Path]) -> Path | None:
    """The file of project module `name` (a package's __init__.py first, as Python finds it)."""
    top, *rest = name.split(".")
    if top not in packages:
        return None
    base = packages[top].joinpath(*rest)
    for candidate in (base / "__init__.py", base.parent / f"{base.name}.py"):
        if candidate.is_file():
            return candidate
    return None


def _import_chain(name: str, packages: dict[str, Path]) -> list[tuple[str, Path]]:
    """(module, file) of what `import name` runs: each enclosing package, then the module; it
    stops at the first part that is no project module (a.b.attr: `from a.b import attr`)."""
    parts = name.split(".")
    chain = []
    for i in range(1, len(parts) + 1):
        module = ".".join(parts[:i])
        path = _module_file(module, packages)
        if path is None:
            break
        chain.append((module, path))
    return chain


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(node: ast.AST) -> Iterator[ast.AST]:
    """Every node below `node` (function bodies included: they run when called) except the
    bodies of `if TYPE_CHECKING:` blocks, which never run."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:
                yield other
                yield from _runtime_nodes(other)
            continue
        yield child
        yield from _runtime_nodes(child)


def imported_names(path: Path, module: str) -> Iterator[str]:
    """Absolute names `path` (module `module`) imports, with `from a import b` giving both
    `a` and `a.b` (b may be a submodule); relative imports resolved against `module`."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if node.level - 1 > len(package) - 1:
                    continue  # beyond the top-level package: would fail at run time
                parts = package[: len(package) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            yield base
            yield from (f"{base}.{a.name}" for a in node.names if a.name != "*")


def import_closure(module: str, packages: dict[str, Path]) -> dict[Path, Path | None]:
    """Every project file `python -m module` runs -> the file that first imported it (None
    for what the command itself imports)."""
    start = _import_chain(module, packages)
    assert start and start[-1][0] == module, f"{module}: no such project module"
    seen: dict[Path, Path | None] = {}
    todo = [(name, path, None) for name, path in start]
    while todo:
        name, path, importer = todo.pop()
        if path in seen:
            continue
        seen[path] = importer
        for imported in imported_names(path, name):
            todo.extend((m, p, path) for m, p in _import_chain(imported, packages))
    return seen


# ---------------------------------------------------------------------------------- dvc.yaml


@dataclass
class StageRun:
    definition: str  # the key under `stages:` in dvc.yaml
    name: str  # as dvc names it: definition, or definition@item for foreach/matrix
    cmd: str
    deps: list[str]
    templated: bool  # foreach/matrix: deps sit under `do:`, one level deeper


def _lookup(ctx: dict[str, Any], dotted: str) -> Any:
    value: Any = ctx
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(dotted)
        value = value[part]
    return value


def _interpolate(value: Any, ctx: dict[str, Any]) -> Any:
    """${item}, ${item.x}, ${key} and params.yaml's ${a.b} filled in; unknown ones kept."""
    if isinstance(value, str):

        def fill(m: re.Match) -> str:
            try:
                return str(_lookup(ctx, m.group(1)))
            except KeyError:
                return m.group(0)

        return _TEMPLATE.sub(fill, value)
    if isinstance(value, list):
        return [_interpolate(v, ctx) for v in value]
    if isinstance(value, dict):
        return {_interpolate(k, ctx): _interpolate(v, ctx) for k, v in value.items()}
    return value


def _iterations(stage: dict[str, Any], ctx: dict[str, Any]) -> list[tuple[str, dict]]:
    """(suffix, variables) of each stage a foreach/matrix definition expands to."""
    if "matrix" in stage:
        keys = list(stage["matrix"])
        return [
            ("-".join(map(str, combo)), {"item": dict(zip(keys, combo, strict=True))})
            for combo in itertools.product(*(stage["matrix"][k] for k in keys))
        ]
    items = stage["foreach"]
    if isinstance(items, str):  # foreach: ${some.list} from params.yaml or vars
        items = _lookup(ctx, _TEMPLATE.fullmatch(items.strip()).group(1))
    if isinstance(items, dict):
        return [(str(k), {"key": k, "item": v}) for k, v in items.items()]
    return [(str(item), {"item": item}) for item in items]


def stage_runs(root: Path) -> list[StageRun]:
    doc = yaml.safe_load((root / "dvc.yaml").read_text())
    params = root / "params.yaml"
    ctx: dict[str, Any] = yaml.safe_load(params.read_text()) if params.exists() else {}
    for v in doc.get("vars", []) or []:
        if isinstance(v, dict):
            ctx |= v
    runs = []
    for definition, stage in doc["stages"].items():
        if "foreach" in stage or "matrix" in stage:
            for suffix, variables in _iterations(stage, ctx):
                body = _interpolate(stage.get("do", stage), ctx | variables)
                runs.append(_run(definition, f"{definition}@{suffix}", body, templated=True))
        else:
            runs.append(_run(definition, definition, _interpolate(stage, ctx), templated=False))
    return runs


def _run(definition: str, name: str, body: dict[str, Any], *, templated: bool) -> StageRun:
    cmd = body.get("cmd", "")
    cmd = " && ".join(cmd) if isinstance(cmd, list) else cmd
    deps = [d if isinstance(d, str) else next(iter(d)) for d in body.get("deps", []) or []]
    return StageRun(definition, name, cmd, [_norm(d) for d in deps], templated)


def _norm(path: str) -> str:
    return posixpath.normpath(path.strip()).removeprefix("./")


def _covered(rel: str, deps: list[str]) -> bool:
    return any(rel == d or rel.startswith(f"{d}/") for d in deps)


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _suggestion(rel: str, root: Path, packages: dict[str, Path]) -> str:
    """The dep to add for `rel`: the file, or for a file inside a subpackage the subpackage's
    directory (dvc.yaml's style: src/livecellseg/models)."""
    path = root / rel
    for package in packages.values():
        if path.is_relative_to(package):
            inside = path.relative_to(package).parts
            if len(inside) > 1 and (package / inside[0] / "__init__.py").is_file():
                return _rel(package / inside[0], root)
    return rel


@dataclass
class Missing:
    stages: list[str]  # the stages (foreach/matrix items) of one dvc.yaml definition lacking it
    deps: dict[str, list[str]]  # dep to add -> the files it covers, and who imports them
    templated: bool


def missing_deps(root: Path) -> dict[str, Missing]:
    """Per dvc.yaml stage definition: the deps to add so its stages cover what they run."""
    packages = project_packages(root)
    missing: dict[str, Missing] = {}
    for run in stage_runs(root):
        m = _MODULE.search(run.cmd)
        assert m, f"stage {run.name}: cmd runs no `python -m <module>`, cannot check: {run.cmd!r}"
        closure = import_closure(m.group(1), packages)
        for path, importer in sorted(closure.items()):
            rel = _rel(path, root)
            if rel in EXEMPT or _covered(rel, run.deps):
                continue
            via = f"imported by {_rel(importer, root)}" if importer else f"run by `-m {m.group(1)}`"
            entry = missing.setdefault(run.definition, Missing([], {}, run.templated))
            if run.name not in entry.stages:
                entry.stages.append(run.name)
            why = entry.deps.setdefault(_suggestion(rel, root, packages), [])
            if f"{rel}, {via}" not in why:
                why.append(f"{rel}, {via}")
    return missing


# ---------------------------------------------------------------------------------- tests


def test_stage_deps_cover_the_code_each_stage_runs():
    missing = missing_deps(ROOT)
    lines = []
    for definition, entry in missing.items():
        lines.append(f"\n{definition} ({', '.join(entry.stages)}): add to its deps:")
        lines += [f"{' ' * (8 if entry.templated else 6)}- {dep}" for dep in entry.deps]
        lines += [f"    # {why}" for whys in entry.deps.values() for why in whys]
    if missing:
        pytest.fail(
            "dvc.yaml: stages run project code that is not among their deps, so a change to "
            "it would leave their outputs stale while `dvc status` says up to date. Paste "
            "these lines into dvc.yaml (or, if a change there cannot change any output, add "
            "the file to EXEMPT in tests/test_dvc_deps.py with the reason):" + "\n".join(lines),
            pytrace=False,
        )


def test_code_deps_exist_and_are_run():
    """A code dep that no longer exists (a moved module) or that the stage never imports is
    stale: dvc would fail on it, or rerun the stage for code it does not run."""
    packages = project_packages(ROOT)
    code_dirs = [_rel(p, ROOT) for p in packages.values()]
    stale = []
    for run in stage_runs(ROOT):
        m = _MODULE.search(run.cmd)
        assert m, f"stage {run.name}: cmd runs no `python -m <module>`: {run.cmd!r}"
        closure = [_rel(p, ROOT) for p in import_closure(m.group(1), packages)]
        for dep in run.deps:
            if not _covered(dep, code_dirs):
                continue  # data, not code
            if not (ROOT / dep).exists():
                stale.append(f"{run.name}: {dep} does not exist")
            elif not any(_covered(f, [dep]) for f in closure):
                stale.append(f"{run.name}: {dep} holds nothing the stage imports")
    if stale:
        pytest.fail("dvc.yaml: remove or fix these code deps:\n" + "\n".join(stale), pytrace=False)


def test_exemptions_name_existing_files():
    gone = [p for p in EXEMPT if not (ROOT / p).is_file()]
    assert not gone, f"EXEMPT names files that do not exist (moved or deleted?): {gone}"


def _holds_no_logic(tree: ast.Module) -> bool:
    """Only docstrings, `from __future__` imports and classes whose bodies are docstrings,
    `pass` or `...` (exception declarations): nothing that runs or computes."""

    def inert(stmt: ast.stmt) -> bool:
        return isinstance(stmt, ast.Pass) or (
            isinstance(stmt, ast.Expr)
            and isinstance(stmt.value, ast.Constant)
            and (isinstance(stmt.value.value, str) or stmt.value.value is Ellipsis)
        )

    for stmt in tree.body:
        if inert(stmt):
            continue
        if isinstance(stmt, ast.ImportFrom) and stmt.module == "__future__":
            continue
        if (
            isinstance(stmt, ast.ClassDef)
            and not stmt.decorator_list
            and not stmt.keywords
            and all(isinstance(b, (ast.Name, ast.Attribute)) for b in stmt.bases)
            and all(inert(s) for s in stmt.body)
        ):
            continue
        return False
    return True


def test_exempt_files_hold_no_logic():
    """The reasons in EXEMPT hold only while the files stay declarations: once one computes
    something, judge again whether it can change an output (and if so, make it a dep)."""
    busy = [
        p
        for p in EXEMPT
        if (ROOT / p).is_file() and not _holds_no_logic(ast.parse((ROOT / p).read_text()))
    ]
    assert not busy, f"EXEMPT files now hold logic; re-judge them: {busy}"


def test_walker_follows_every_kind_of_import(tmp_path):
    """The closure walker on a tiny project, so the main test cannot pass vacuously."""
    files = {
        "stages/__init__.py": '"""stages."""\n',
        "stages/common.py": "from pkg.errors import Oops\n",
        "stages/run.py": (
            "import json\n"  # stdlib: not followed
            "import numpy as np\n"  # third party: not followed
            "from stages.common import Oops\n"
            "from pkg.sub import deep, CONSTANT\n"  # package + submodule; attribute ignored
            "from pkg import top\n"
            "def main():\n"
            "    import pkg.lazy\n"  # inside a function: it runs, so it counts
        ),
        "src/pkg/__init__.py": "",
        "src/pkg/errors.py": "class Oops(Exception):\n    pass\n",
        "src/pkg/top.py": "from . import sibling\nfrom .sub.deep import f\n",
        "src/pkg/sibling.py": "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from pkg import typing_only\n"
        "else:\n    from pkg import runtime_only\n",
        "src/pkg/typing_only.py": "",
        "src/pkg/runtime_only.py": "",
        "src/pkg/lazy.py": "from ..pkg import nothing\n",  # beyond the top: ignored
        "src/pkg/sub/__init__.py": "CONSTANT = 1\nfrom .deep import f\n",
        "src/pkg/sub/deep.py": "def f():\n    from pkg.sub import leaf\n",
        "src/pkg/sub/leaf.py": "",
        "src/pkg/unused.py": "",
        "src/pkg/sub/unused.py": "",
        "src/notapackage/mod.py": "",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    packages = project_packages(tmp_path)
    assert packages == {"stages": tmp_path / "stages", "pkg": tmp_path / "src/pkg"}

    closure = import_closure("stages.run", packages)
    assert sorted(_rel(p, tmp_path) for p in closure) == sorted(
        [
            "stages/__init__.py",
            "stages/run.py",
            "stages/common.py",
            "src/pkg/__init__.py",
            "src/pkg/errors.py",
            "src/pkg/top.py",
            "src/pkg/sibling.py",
            "src/pkg/runtime_only.py",
            "src/pkg/lazy.py",
            "src/pkg/sub/__init__.py",
            "src/pkg/sub/deep.py",
            "src/pkg/sub/leaf.py",
        ]
    )
    assert closure[tmp_path / "src/pkg/sub/leaf.py"] == tmp_path / "src/pkg/sub/deep.py"

    (tmp_path / "dvc.yaml").write_text(
        "stages:\n"
        "  one:\n"
        "    cmd: python -m stages.run --out x\n"
        "    deps:\n"
        "      - stages/run.py\n"
        "      - src/pkg/sub/deep.py\n"
        "  each:\n"
        "    foreach: [a, b]\n"
        "    do:\n"
        "      cmd: python -m stages.run --name ${item}\n"
        "      deps:\n"
        "        - data/${item}.json\n"
        "        - ./src/pkg/\n"
        "        - stages\n"
    )
    runs = stage_runs(tmp_path)
    assert [r.name for r in runs] == ["one", "each@a", "each@b"]
    assert runs[1].deps == ["data/a.json", "src/pkg", "stages"]
    missing = missing_deps(tmp_path)
    assert list(missing) == ["one"]  # each@a/b cover everything with two directories
    assert missing["one"].stages == ["one"]
    assert sorted(missing["one"].deps) == [
        "src/pkg/__init__.py",
        "src/pkg/errors.py",
        "src/pkg/lazy.py",
        "src/pkg/runtime_only.py",
        "src/pkg/sibling.py",
        "src/pkg/sub",  # for sub/__init__.py and sub/leaf.py: the subpackage's directory
        "src/pkg/top.py",
        "stages/common.py",
        # stages/__init__.py is exempt (EXEMPT), sub/deep.py is a dep
    ]
    assert (
        "src/pkg/sub/leaf.py, imported by src/pkg/sub/deep.py" in missing["one"].deps["src/pkg/sub"]
    )
