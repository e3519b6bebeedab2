"""The package's import graph between its layers, read from the source with ``ast``.

    python tools/import_graph.py            # every module under api/ and what it imports
    python tools/import_graph.py --layers   # the same folded into layers (api, service, ...)

A module's imports are every ``import inference_engine.x`` and ``from inference_engine.x import``
in it, including those under ``if TYPE_CHECKING:`` (a type-only import still couples the code).
``tests/test_architecture.py`` uses :func:`imports` to enforce the layering rules.
"""

from __future__ import annotations

import argparse
import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = "inference_engine"
SOURCE = Path(__file__).resolve().parents[1] / "src" / PACKAGE


def module_name(path: Path, root: Path = SOURCE) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, root: Path = SOURCE) -> set[str]:
    """The ``inference_engine`` modules that the module at ``path`` imports."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module_name(path, root)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith(PACKAGE))
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.startswith(PACKAGE):
                found.add(target)
                # ``from inference_engine import models`` imports a module, not a name.
                for alias in node.names:
                    if (root.parent / target.replace(".", "/") / alias.name).exists() or (
                        root.parent / (target.replace(".", "/") + "/" + alias.name + ".py")
                    ).exists():
                        found.add(f"{target}.{alias.name}")
    return found


def layer(module: str) -> str:
    """The layer a module belongs to: its first sub-package, or its own name for top-level ones."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def graph(root: Path = SOURCE) -> dict[str, set[str]]:
    return {module_name(p, root): imports(p, root) for p in sorted(root.rglob("*.py"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", action="store_true", help="fold modules into their layers")
    parser.add_argument("--all", action="store_true", help="every module, not only api/")
    args = parser.parse_args()
    edges = graph()
    if args.layers:
        folded: dict[str, set[str]] = defaultdict(set)
        for module, targets in edges.items():
            folded[layer(module)].update(layer(t) for t in targets if layer(t) != layer(module))
        for name in sorted(folded):
            print(f"{name:14} -> {', '.join(sorted(folded[name])) or '-'}")
        return
    for module, targets in edges.items():
        if args.all or module.startswith(f"{PACKAGE}.api"):
            shown = sorted(t.removeprefix(f"{PACKAGE}.") for t in targets)
            print(f"{module.removeprefix(PACKAGE + '.'):22} -> {', '.join(shown) or '-'}")


if __name__ == "__main__":
    main()
