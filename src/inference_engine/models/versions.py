"""Versions in the model repository, Triton's layout: ``models/<name>/<N>/``.

A model folder's ``model.yaml`` holds the settings its versions share; each numbered folder
holds one version's files and may carry its own ``model.yaml`` whose keys override the shared
ones (``backend: onnx`` for version 2). A folder without numbered sub-folders is one version,
exactly as before. ``version_policy`` picks the versions served; ``traffic`` and ``shadow``
say how requests that name no version are spread over them. Everything here is checked
before any weights load, and every message names the file and the key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inference_engine.errors import ModelLoadError
from inference_engine.models.config import ModelFile

#: Keys only the model's shared ``model.yaml`` may set (they are about the model, not a version).
MODEL_KEYS = ("name", "version", "version_policy", "traffic", "shadow")
#: Settings whose mappings a version's file merges into the shared ones, key by key.
MERGED_KEYS = ("preprocessing", "options")


def version_folders(directory: Path) -> dict[int, Path]:
    """The numbered sub-folders of a model folder (``1``, ``2``, ...), by version number."""
    return {
        int(child.name): child
        for child in directory.iterdir()
        if child.is_dir() and child.name.isdecimal() and child.name.isascii()
    }


def merged_settings(shared: Mapping[str, Any], own: Mapping[str, Any], version: int) -> dict[str, Any]:
    """A version's ``model.yaml`` laid over the shared one (mappings merged one level deep)."""
    merged = {k: v for k, v in shared.items() if k not in ("version_policy", "traffic", "shadow")}
    for key, value in own.items():
        if key in MERGED_KEYS and isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    merged["version"] = str(version)
    return merged


def check_version_file(path: Path, own: Mapping[str, Any]) -> None:
    """Refuse model-level keys in a version's own ``model.yaml``."""
    wrong = sorted(k for k in own if k in MODEL_KEYS)
    if wrong:
        raise ModelLoadError(
            f"{path}: {', '.join(wrong)} may only be set in the model's shared model.yaml "
            "(a version's number is its folder's name)"
        )


@dataclass(frozen=True)
class ServingPlan:
    """How one model's requests are spread over its served versions.

    ``traffic`` holds the weight (summing to 1) of each version that takes requests naming no
    version, in the order of ``versions`` (oldest first); ``shadow`` the fraction of those
    requests copied to a version as well.
    """

    policy: str = "latest: 1"
    versions: tuple[str, ...] = ("1",)
    traffic: Mapping[str, float] = field(default_factory=lambda: {"1": 1.0})
    shadow: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def single(cls, version: str) -> ServingPlan:
        return cls(versions=(version,), traffic={version: 1.0})

    @classmethod
    def build(cls, file: ModelFile, versions: list[str], where: Path) -> ServingPlan:
        """The plan ``file`` asks for over the served ``versions`` (oldest first); checked."""
        served = ", ".join(versions) or "none"
        if file.traffic is None:
            traffic = {versions[-1]: 1.0}
        else:
            for version, weight in file.traffic.items():
                if not math.isfinite(weight) or weight < 0:
                    raise ModelLoadError(
                        f"{where}: traffic.{version}: weights must be 0 or more, got {weight}"
                    )
                if weight > 0 and version not in versions:
                    raise ModelLoadError(
                        f"{where}: traffic.{version}: version {version} is not served (served: {served}); "
                        "add it to version_policy or give it weight 0"
                    )
            total = sum(file.traffic.values())
            if total <= 0:
                raise ModelLoadError(f"{where}: traffic: at least one version needs a weight above 0")
            traffic = {v: file.traffic[v] / total for v in versions if file.traffic.get(v, 0) > 0}
        shadow: dict[str, float] = {}
        for version, percent in (file.shadow or {}).items():
            if not (math.isfinite(percent) and 0 <= percent <= 100):
                raise ModelLoadError(f"{where}: shadow.{version}: a percentage from 0 to 100, got {percent}")
            if version not in versions:
                raise ModelLoadError(
                    f"{where}: shadow.{version}: version {version} is not served (served: {served})"
                )
            if percent > 0:
                shadow[version] = percent / 100.0
        return cls(file.version_policy.describe(), tuple(versions), traffic, shadow)

    @property
    def newest(self) -> str:
        return self.versions[-1]
