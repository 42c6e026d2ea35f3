"""import-linter contract types for rules the built-in ones cannot state (see pyproject.toml's contracts).

* ``eager_imports``: what a module loads the moment it is imported. grimp's graph holds every import,
  including those inside functions, so a ``forbidden`` contract cannot tell "``vlm --help`` loads torch" from
  "``vlm train`` loads torch when it runs". This contract follows only the imports that run at import time
  (module and class bodies, not function bodies nor ``if TYPE_CHECKING:`` blocks), from the source modules
  through every vlm module they reach, and fails on a chain that ends in a forbidden package.
* ``private_names``: no module imports another module's ``_private`` names (a private submodule of its own
  package, such as the C build ``vlm.evaluation._ted``, stays allowed: that is the package's own business).
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

from importlinter.application import output
from importlinter.domain import fields
from importlinter.domain.contract import Contract, ContractCheck


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a name inside a module, not a submodule
        return False


def _source(module: str) -> Path | None:
    if not _is_module(module):
        return None
    spec = importlib.util.find_spec(module)
    return Path(spec.origin) if spec and spec.origin and spec.origin.endswith(".py") else None


def _imports(module: str, tree: ast.AST, eager_only: bool):
    """(line, imported module, names) for each import in ``tree``; names is () for ``import x``."""
    package = module if _source(module) and _source(module).name == "__init__.py" else module.rpartition(".")[0]

    def visit(node: ast.AST, eager: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                if not eager_only:
                    yield from visit(child, False)
                continue
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                if not eager_only:
                    yield from visit(child, False)
                continue
            if isinstance(child, ast.Import):
                for a in child.names:
                    yield child.lineno, a.name, ()
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - child.level + 1] + ([base] if base else []))
                yield child.lineno, base, tuple(a.name for a in child.names)
            else:
                yield from visit(child, eager)

    yield from visit(tree, True)


def _tree(module: str) -> ast.AST | None:
    path = _source(module)
    return ast.parse(path.read_text(encoding="utf-8")) if path else None


class EagerImportsContract(Contract):
    """Importing ``source_modules`` must not load any of ``forbidden_modules`` (external packages)."""

    type_name = "eager_imports"
    source_modules = fields.ListField(subfield=fields.StringField())
    forbidden_modules = fields.ListField(subfield=fields.StringField())

    def check(self, graph, verbose: bool) -> ContractCheck:
        opts = self.session_options
        root = opts.get("root_package") or (opts.get("root_packages") or ["vlm"])[0]
        forbidden = set(self.forbidden_modules)
        chains, seen = [], set()
        todo = [(m, [m]) for m in self.source_modules]
        while todo:
            module, chain = todo.pop()
            if module in seen:
                continue
            seen.add(module)
            tree = _tree(module)
            if tree is None:
                continue
            for line, target, names in _imports(module, tree, eager_only=True):
                top = target.split(".")[0]
                if top in forbidden:
                    chains.append(chain + [f"{target} (line {line})"])
                elif top == root:
                    # ``from vlm.x import y`` loads vlm.x's parents, vlm.x, and y when y is a submodule
                    parts = target.split(".")
                    nexts = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
                    nexts += [f"{target}.{n}" for n in names if _is_module(f"{target}.{n}")
                              ] if names and _source(target) and _source(target).name == "__init__.py" else []
                    todo += [(n, chain + [n]) for n in nexts if n not in seen]
        return ContractCheck(kept=not chains, metadata={"chains": chains})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for chain in check.metadata["chains"]:
            output.print_error(" -> ".join(chain), bold=False)
        output.new_line()
        output.print("Import it inside the function that needs it (see the style guide's --help rule).")


class PrivateNamesContract(Contract):
    """No module of ``packages`` imports a ``_private`` name of another module."""

    type_name = "private_names"
    packages = fields.ListField(subfield=fields.StringField())

    def check(self, graph, verbose: bool) -> ContractCheck:
        root = self.packages[0].split(".")[0]
        found = []
        for module in sorted(m for p in self.packages for m in graph.find_descendants(p) | {p}):
            tree = _tree(module)
            if tree is None:
                continue
            for line, target, names in _imports(module, tree, eager_only=False):
                for name in names if target.split(".")[0] == root else ():
                    private = name.startswith("_") and not name.startswith("__")
                    submodule = private and _is_module(f"{target}.{name}")
                    if private and target != module and not (submodule and module.startswith(target + ".")):
                        found.append(f"{module}:{line} imports {target}.{name}")
        return ContractCheck(kept=not found, metadata={"found": found})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for line in check.metadata["found"]:
            output.print_error(line, bold=False)
        output.new_line()
        output.print("Make the name public where it is shared, or move it down to the stage both users import.")
