"""Versions in the repository: Triton's layout, version policies, per-version overrides, plans."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from inference_engine.models.config import ModelFile, VersionPolicy
from inference_engine.models.loader import scan_model, scan_repository
from inference_engine.models.versions import ServingPlan
from inference_engine.settings import BatchingSettings
from tests.helpers import FIXTURE_MODELS

DEFAULTS = BatchingSettings()


def versioned(repo: Path, name: str, versions: dict[int, dict[str, object] | None], **shared: object) -> Path:
    """A model folder with a shared model.yaml and numbered folders (each with its own model.yaml
    when given), running the colour fixture handler."""
    folder = repo / name
    folder.mkdir(parents=True)
    shutil.copy(FIXTURE_MODELS / "colour" / "model.py", folder / "model.py")
    (folder / "model.yaml").write_text(yaml.safe_dump({"handler": "model.py", "labels": None, **shared}))
    for number, own in versions.items():
        (folder / str(number)).mkdir()
        if own is not None:
            (folder / str(number) / "model.yaml").write_text(yaml.safe_dump(own))
    return folder


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ({}, [3]),
        ({"latest": 2}, [2, 3]),
        ("all", [1, 2, 3]),
        ({"specific": [1, 3, 9]}, [1, 3]),
    ],
)
def test_version_policies_pick_like_triton(policy: object, expected: list[int]) -> None:
    assert VersionPolicy.model_validate(policy).select([3, 1, 2]) == expected


def test_a_policy_is_one_of_the_three() -> None:
    with pytest.raises(ValidationError, match="one of latest, all or specific"):
        VersionPolicy.model_validate({"latest": 1, "all": True})
    assert VersionPolicy.model_validate({"specific": [2]}).describe() == "specific: 2"


def test_a_folder_without_numbered_folders_is_version_1(tmp_path: Path) -> None:
    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "model.yaml").write_text(yaml.safe_dump({"handler": "efficientnet_lite", "version": "7"}))
    specs, broken = scan_model(folder, DEFAULTS)
    assert broken == [] and [s.version for s in specs] == ["7"]
    assert specs[0].plan == ServingPlan.single("7") and specs[0].directory == folder


def test_each_version_overrides_the_shared_settings(tmp_path: Path) -> None:
    versioned(
        tmp_path, "m", {1: None, 2: {"top_k": 2, "preprocessing": {"crop": 200}}, 3: None},
        version_policy="all", traffic={"1": 3, "2": 1}, preprocessing={"resize": 240, "crop": 224},
    )  # fmt: skip
    specs, broken = scan_repository(tmp_path, DEFAULTS)
    assert broken == []
    by_version = {s.version: s for s in specs}
    assert list(by_version) == ["1", "2", "3"]
    assert by_version["2"].config.top_k == 2 and by_version["1"].config.top_k == 5
    assert (by_version["2"].config.preprocessing.resize, by_version["2"].config.preprocessing.crop) == (
        240,
        200,
    )
    assert by_version["2"].directory == tmp_path / "m" / "2"
    plan = by_version["1"].plan
    assert plan.versions == ("1", "2", "3") and dict(plan.traffic) == {"1": 0.75, "2": 0.25}
    assert plan.policy == "all" and plan.newest == "3"
    # Each version's handler is its own import, so two versions can run different code.
    assert by_version["1"].handler_class is not by_version["2"].handler_class


def test_default_traffic_goes_to_the_newest_served_version(tmp_path: Path) -> None:
    versioned(tmp_path, "m", {1: None, 2: None, 10: None}, version_policy={"latest": 2})
    specs, _ = scan_model(tmp_path / "m", DEFAULTS)
    assert [s.version for s in specs] == ["2", "10"]
    assert dict(specs[0].plan.traffic) == {"10": 1.0}


@pytest.mark.parametrize(
    ("shared", "message"),
    [
        ({"traffic": {"1": 50, "3": 50}}, "traffic.3: version 3 is not served"),
        ({"traffic": {"1": 0}}, "at least one version needs a weight above 0"),
        ({"traffic": {"1": -1}}, "weights must be 0 or more"),
        ({"shadow": {"3": 10}}, "shadow.3: version 3 is not served"),
        ({"shadow": {"2": 150}}, "a percentage from 0 to 100"),
        ({"version": "2"}, "each version is its folder's name"),
        ({"version_policy": {"specific": [5]}}, "selects none of the version folders"),
        ({"traffic": "all"}, "traffic: Input should be a valid dictionary"),
    ],
)
def test_a_wrong_shared_file_breaks_the_whole_model(
    tmp_path: Path, shared: dict[str, object], message: str
) -> None:
    versioned(tmp_path, "m", {1: None, 2: None}, **{"version_policy": "all", **shared})
    specs, broken = scan_model(tmp_path / "m", DEFAULTS)
    assert specs == [] and len(broken) == 1 and broken[0].version is None
    assert message in broken[0].error and "model.yaml" in broken[0].error


def test_weight_0_may_name_a_version_no_longer_served(tmp_path: Path) -> None:
    versioned(tmp_path, "m", {2: None}, traffic={"1": 0, "2": 100})
    specs, broken = scan_model(tmp_path / "m", DEFAULTS)
    assert broken == [] and dict(specs[0].plan.traffic) == {"2": 1.0}


def test_a_wrong_version_breaks_only_that_version(tmp_path: Path) -> None:
    versioned(tmp_path, "m", {1: None, 2: {"top_k": 0}, 3: {"traffic": {"3": 1}}}, version_policy="all")
    specs, broken = scan_model(tmp_path / "m", DEFAULTS)
    assert [s.version for s in specs] == ["1"]
    errors = {b.version: b.error for b in broken}
    assert "top_k" in errors["2"] and str(tmp_path / "m" / "2" / "model.yaml") in errors["2"]
    assert "may only be set in the model's shared model.yaml" in errors["3"]
    assert all(b.plan is not None and b.plan.versions == ("1", "2", "3") for b in broken)


def test_a_version_may_bring_its_own_handler_file(tmp_path: Path) -> None:
    folder = versioned(tmp_path, "m", {1: None, 2: None}, version_policy="all")
    (folder / "2" / "model.py").write_text(
        (folder / "model.py").read_text().replace("ColourHandler", "Other")
    )
    specs, broken = scan_model(folder, DEFAULTS)
    assert broken == []
    assert [s.handler_class.__name__ for s in specs] == ["ColourHandler", "Other"]


def test_model_file_schema_takes_the_new_keys() -> None:
    parsed = ModelFile.model_validate(
        {"name": "m", "handler": "x", "version_policy": "all", "traffic": {"1": 1}, "shadow": {"1": 5}}
    )
    assert parsed.version_policy.all and parsed.traffic == {"1": 1.0} and parsed.shadow == {"1": 5.0}
