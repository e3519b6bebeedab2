"""How the single-purpose bench scripts (``bench.fairness``, ``bench.admission``) save a run:
``<stem>.json`` (floats to 5 significant digits, NaN and infinity as null) beside its markdown."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else float(f"{value:.5g}")
    return value


def write(
    document: Mapping[str, Any], out: Path, stem: str, markdown: Callable[[Mapping[str, Any]], str]
) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    json_path.write_text(json.dumps(jsonable(document), indent=1) + "\n")
    md_path.write_text(markdown(document))
    return [json_path, md_path]
