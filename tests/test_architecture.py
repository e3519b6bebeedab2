"""The layering rules of docs/ARCHITECTURE.md, checked on the source with ``ast``.

Transports (``api/`` for HTTP, ``rpc/`` for gRPC) translate to and from the service's typed
interface; they never reach past it into model handlers, runtimes or batchers, and neither
imports the other (what they share lives in ``transport.py``, ``v2codec.py``, ``access.py``).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def _import_graph() -> ModuleType:
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "tools" / "import_graph.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("import_graph", module)
    spec.loader.exec_module(module)
    return module


graph = _import_graph()
FORBIDDEN_IN_API = ("inference_engine.models", "inference_engine.runtime", "inference_engine.batching")


TRANSPORTS = ("inference_engine.api", "inference_engine.rpc")


def test_no_transport_module_imports_models_runtime_or_batching() -> None:
    offenders = {
        module: sorted(t for t in targets if t.startswith(FORBIDDEN_IN_API))
        for module, targets in graph.graph().items()
        if module.startswith(TRANSPORTS)
    }
    assert {m: t for m, t in offenders.items() if t} == {}


def test_transports_do_not_import_each_other() -> None:
    modules = graph.graph()
    assert any(m.startswith("inference_engine.rpc.") for m in modules)  # the rule sees gRPC's modules
    offenders = {
        module: sorted(t for t in targets if t.startswith(TRANSPORTS) and not t.startswith(own))
        for own in TRANSPORTS
        for module, targets in modules.items()
        if module.startswith(own)
    }
    assert {m: t for m, t in offenders.items() if t} == {}


def test_the_rule_sees_every_kind_of_import(tmp_path: Path) -> None:
    """The checker would catch an offender written any of the usual ways (it cannot pass vacuously)."""
    package = tmp_path / "inference_engine"
    (package / "api").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "models").mkdir()
    (package / "models" / "__init__.py").write_text("")
    (package / "models" / "base.py").write_text("")
    (package / "api" / "__init__.py").write_text("")
    (package / "api" / "a.py").write_text("import inference_engine.runtime\n")
    (package / "api" / "b.py").write_text("from inference_engine.models.base import ModelHandler\n")
    (package / "api" / "c.py").write_text("from ..batching import DynamicBatcher\n")
    (package / "api" / "d.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from inference_engine import models\n"
    )
    found = graph.graph(package)
    assert "inference_engine.runtime" in found["inference_engine.api.a"]
    assert "inference_engine.models.base" in found["inference_engine.api.b"]
    assert "inference_engine.batching" in found["inference_engine.api.c"]
    assert "inference_engine.models" in found["inference_engine.api.d"]


def test_models_do_not_import_the_service_or_transports() -> None:
    upward = ("inference_engine.api", "inference_engine.service", "inference_engine.runtime")
    offenders = {
        module: sorted(t for t in targets if t.startswith(upward))
        for module, targets in graph.graph().items()
        if module.startswith(("inference_engine.models", "inference_engine.batching"))
    }
    assert {m: t for m, t in offenders.items() if t} == {}
