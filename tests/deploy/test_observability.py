"""The Prometheus rules, scrape config and Grafana dashboard under deploy/, checked against the server.

Every ``inference_engine_*`` name used in a PromQL expression must be one that the real server
exports: a server is started over a small repository, driven through the code paths that create
each labelled series (a good request, bad ones, a failing batch, a dropped input, a model that
fails to load, a watchdog restart, a model with two versions and a shadow, a model control
load, a deadline refused by predictive admission, output-cache hits, misses and evictions, and
two identical inputs merged), and its ``GET /metrics`` is parsed. Label names used in selectors,
``by (...)`` clauses and legends must be labels of those series.

The same names and labels are also checked, without a server, against ``VERSIONED_FAMILIES``: the
metrics as the model-versions change defines them (a ``version`` label on every per-model family,
and the traffic, shadow and model-control families), and the admission and cache families added
since. metrics.py is checked against that list on its own
(``test_metrics_module_declares_the_versioned_families``).

``promtool`` (Debian package ``prometheus``) is optional: when it is installed, the rules file and
the scrape config are checked with it, the alerts are unit-tested with ``promtool test rules``, and
every dashboard query is parsed by it. The structural checks always run.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
import tomllib
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from inference_engine.gpumetrics import watch_cuda
from inference_engine.metrics import Metrics
from tests.helpers import ROOT, ServerProcess, cat_jpeg, encode, free_port, metric_value
from tests.repository import add_colour_model, add_colour_text_model, add_model
from tests.unit.test_gpumetrics import FakeCuda

DEPLOY = ROOT / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "inference-engine.json"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = DEPLOY / "grafana" / "provisioning" / "dashboards" / "dashboards.yml"
RUNBOOK = ROOT / "docs" / "OPERATIONS.md"
# runbook_url links are absolute: the project's published docs (pyproject's Documentation URL).
DOCS_BASE = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"][
    "Documentation"
].removesuffix("docs/")

METRIC_NAME = re.compile(r"\binference_engine_[a-z0-9_]+")
SELECTOR = re.compile(r"\b(inference_engine_[a-z0-9_]+)\s*\{([^}]*)\}")
MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)\s*"')
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
AGGREGATION = re.compile(r"\b(?:sum|min|max|avg|count|group)\s*\(")
LEGEND_LABEL = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
RANGE_WINDOW = re.compile(r"\[([^\]]+)\]")
DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
# Labels that Prometheus adds at scrape time: job and instance always; namespace and pod with
# Kubernetes service discovery (a ServiceMonitor), which the dashboard's variables select on.
TARGET_LABELS = frozenset({"job", "instance", "namespace", "pod"})
SEVERITIES = frozenset({"critical", "warning", "info"})
# Grafana's variables, replaced by something PromQL parses when the queries go through promtool.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "1h",
    "$model": ".+",
    "$namespace": ".*",
    "$pod": ".*",
}

GREEN = encode(np.full((32, 32, 3), (10, 250, 10), np.uint8), "PNG")
BLUE = encode(np.full((32, 32, 3), (10, 10, 250), np.uint8), "PNG")
#: Five images of other pixels: five entries for the output cache (none of them mostly blue).
COLOURS = [
    encode(np.full((32, 32, 3), colour, np.uint8), "PNG")
    for colour in ((250, 10, 10), (10, 250, 10), (200, 200, 10), (250, 120, 10), (120, 250, 120))
]
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
}

_MV = ("model", "version")
_PAIR = ("model", "primary", "shadow")
#: The per-model families and their labels once models have versions (family name as
#: prometheus_client and its text parser give it: a counter without ``_total``) -> (type, labels).
#: Every per-model family has ``version`` right after ``model``; the seven under the first
#: ``new with`` comment are new with versions, those under the second with admission and the cache.
VERSIONED_FAMILIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "inference_engine_requests": ("counter", ("model", "version", "route", "status", "protocol")),
    "inference_engine_request_duration_seconds": ("histogram", ("model", "version", "route", "protocol")),
    "inference_engine_errors": ("counter", ("model", "version", "type")),
    "inference_engine_preprocess_duration_seconds": ("histogram", _MV),
    "inference_engine_queue_wait_seconds": ("histogram", _MV),
    "inference_engine_inference_duration_seconds": ("histogram", _MV),
    "inference_engine_batch_size": ("histogram", _MV),
    "inference_engine_queue_depth": ("gauge", _MV),
    "inference_engine_in_flight_requests": ("gauge", _MV),
    "inference_engine_dropped_inputs": ("counter", ("model", "version", "reason")),
    "inference_engine_model_ready": ("gauge", _MV),
    "inference_engine_model_load_seconds": ("gauge", _MV),
    "inference_engine_model_warmup_seconds": ("gauge", _MV),
    "inference_engine_model_failed_recoveries": ("gauge", _MV),
    "inference_engine_model_load_failures": ("counter", _MV),
    "inference_engine_batch_failures": ("counter", _MV),
    "inference_engine_watchdog_restarts": ("counter", ("model", "version", "reason")),
    "inference_engine_label_cache_lookups": ("counter", ("model", "version", "result")),
    # new with versions, traffic splitting, shadows and model control
    "inference_engine_traffic_weight": ("gauge", _MV),
    "inference_engine_shadow_requests": ("counter", (*_PAIR, "outcome")),
    "inference_engine_shadow_top1_agreements": ("counter", _PAIR),
    "inference_engine_shadow_agreement_ratio": ("gauge", _PAIR),
    "inference_engine_shadow_score_difference": ("histogram", _PAIR),
    "inference_engine_shadow_cosine_similarity": ("histogram", _PAIR),
    "inference_engine_repository_operations": ("counter", ("model", "operation", "outcome")),
    # new with predictive admission, the output cache and merged duplicates
    "inference_engine_admission_refusals": ("counter", ("model", "version", "reason")),
    "inference_engine_admission_prediction_error_seconds": ("histogram", _MV),
    "inference_engine_admission_predictions": ("counter", ("model", "version", "outcome")),
    "inference_engine_cache_lookups": ("counter", ("model", "version", "result")),
    "inference_engine_cache_bytes": ("gauge", _MV),
    "inference_engine_cache_entries": ("gauge", _MV),
    "inference_engine_cache_evictions": ("counter", _MV),
    "inference_engine_merged_inputs": ("counter", _MV),
}
VERSIONS_ROW = "Versions"
ADMISSION_ROW = "Admission, fairness and cache"
#: Per process and per GPU, not per model: Prometheus' process_*/python_* and the GPU gauges.
PROCESS_ROW = "Process and GPU"
SHADOW_ALERT = "InferenceEngineShadowDisagreement"


# -- the files ---------------------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def dashboard_panels() -> list[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    panels: list[dict[str, Any]] = []
    for panel in dashboard()["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def row_panels(title: str) -> list[dict[str, Any]]:
    """The panels of the row ``title``: nested in it when collapsed, else those after it up to
    the next row."""
    top = dashboard()["panels"]
    (start,) = [i for i, p in enumerate(top) if p["type"] == "row" and p["title"] == title]
    if top[start].get("collapsed"):
        return list(top[start]["panels"])
    found: list[dict[str, Any]] = []
    for panel in top[start + 1 :]:
        if panel["type"] == "row":
            break
        found.append(panel)
    return found


def rule_expressions() -> list[tuple[str, str]]:
    return [(f"alert {rule['alert']}", rule["expr"]) for rule in alert_rules()]


def dashboard_expressions(panels: list[dict[str, Any]] | None = None) -> list[tuple[str, str, str]]:
    """(where, expr, legendFormat) of every panel target (of ``panels``, default all)."""
    found = []
    for panel in dashboard_panels() if panels is None else panels:
        for target in panel.get("targets", []):
            where = f"panel {panel['id']} {panel['title']!r} target {target.get('refId')}"
            found.append((where, target.get("expr", ""), target.get("legendFormat", "")))
    return found


def variable_queries() -> list[tuple[str, str]]:
    found = []
    for variable in dashboard()["templating"]["list"]:
        if variable.get("type") == "query":
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            found.append((f"variable {variable['name']}", text))
    return found


# -- what the real server exports --------------------------------------------------------------


@dataclass
class Exposition:
    text: str
    families: dict[str, str]  # family name (as the parser names it) -> type
    sample_names: set[str]  # every series name that can appear, with its suffix
    labels: dict[str, set[str]]  # series name -> label names seen on it


def parse_exposition(text: str) -> Exposition:
    families: dict[str, str] = {}
    names: set[str] = set()
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        families[family.name] = family.type
        # A labelled metric with no child yet is still announced by its # TYPE line.
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
        for sample in family.samples:
            names.add(sample.name)
            labels.setdefault(sample.name, set()).update(sample.labels)
    # Series of one family share their labels (plus `le` on buckets).
    by_family: dict[str, set[str]] = {}
    for name, seen in labels.items():
        for family_name, kind in families.items():
            if any(name == family_name + suffix for suffix in SUFFIXES.get(kind, ("",))):
                by_family.setdefault(family_name, set()).update(seen - {"le"})
    for family_name, kind in families.items():
        for suffix in SUFFIXES.get(kind, ("",)):
            extra = {"le"} if suffix == "_bucket" else set()
            if family_name in by_family:
                labels[family_name + suffix] = by_family[family_name] | extra
    return Exposition(text, families, names, labels)


async def _drive(server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        good = await client.post("/v1/models/colour/predict", content=cat_jpeg())
        assert good.status_code == 200, good.text
        assert (await client.post("/predict", content=GREEN)).status_code == 200
        for _ in range(2):  # a miss, then a hit, in the label cache
            labelled = await client.post("/v1/models/zero_shot/predict?labels=red,green", content=GREEN)
            assert labelled.status_code == 200
        bad = await client.post(
            "/v1/models/colour/predict",
            content=b"this is not an image",
            headers={"content-type": "application/octet-stream"},
        )
        assert bad.status_code == 415, bad.text
        assert (await client.post("/v1/models/no_such_model/predict", content=GREEN)).status_code == 404
        assert (await client.post("/v1/models/broken/predict", content=GREEN)).status_code == 503
        assert (await client.post("/v1/models/poison/predict", content=BLUE)).status_code == 500
        # A request whose deadline passes while it waits behind a slow forward pass is dropped
        # (`slow` admits by queue room only, so the request queues and times out).
        first = asyncio.create_task(client.post("/v1/models/slow/predict", content=GREEN))
        await asyncio.sleep(0.2)  # the first is in its forward pass
        late = await client.post(
            "/v1/models/slow/predict", content=GREEN, headers={"X-Request-Timeout-Ms": "100"}
        )
        assert late.status_code == 504, late.text
        assert (await first).status_code == 200
        # Predictive admission refuses at once a deadline shorter than one forward pass; the
        # request with time enough is admitted, and its prediction scored.
        refused = await client.post(
            "/v1/models/predictive/predict", content=GREEN, headers={"X-Request-Timeout-Ms": "100"}
        )
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["type"] == "deadline_unmeetable", refused.text
        admitted = await client.post(
            "/v1/models/predictive/predict", content=GREEN, headers={"X-Request-Timeout-Ms": "10000"}
        )
        assert admitted.status_code == 200, admitted.text
        # The output cache: a miss, a hit, four more colours (five entries past the 1024 bytes
        # that hold four: the least recently used goes), then the evicted first colour again.
        cached = [COLOURS[0], COLOURS[0], *COLOURS[1:], COLOURS[0]]
        looked_up = [(await client.post("/v1/models/cached/predict", content=image)) for image in cached]
        assert [r.status_code for r in looked_up] == [200] * len(cached), [r.text for r in looked_up]
        assert [r.headers.get("x-cache") for r in looked_up] == ["miss", "hit"] + ["miss"] * 5
        # Two identical requests at once to a slow model that merges them: one forward pass.
        merged = await asyncio.gather(
            *(client.post("/v1/models/merging/predict", content=GREEN) for _ in range(2))
        )
        assert [r.status_code for r in merged] == [200, 200], [r.text for r in merged]
        # A forward pass that hangs past watchdog.max_forward_s makes the watchdog restart the model.
        hung = await client.post("/v1/models/hangs/predict", content=BLUE)
        assert hung.status_code == 503, hung.text
        # Two versions: a request that names none goes to version 1 (the traffic weights), and a
        # copy of it to version 2, its shadow, which is compared in the background.
        for _ in range(2):
            routed = await client.post("/v1/models/versioned/predict", content=GREEN)
            assert routed.status_code == 200, routed.text
            assert routed.json()["model_version"] == "1", routed.text
            embedded = await client.post("/v1/models/versioned_text/predict?labels=red,green", content=GREEN)
            assert embedded.status_code == 200, embedded.text
        pinned = await client.post("/v1/models/versioned/versions/2/predict", content=GREEN)
        assert pinned.status_code == 200, pinned.text
        # Model control: a load that re-reads the folder (nothing changed, so what serves stays).
        loaded = await client.post("/v2/repository/models/versioned/load")
        assert loaded.status_code == 200, loaded.text
        for path in ("/health", "/ready", "/v1/models", "/info"):
            await client.get(path)


def add_versions(folder: Path, count: int, **model_keys: Any) -> None:
    """Turn a one-version model folder into version folders 1..count that share its model.yaml
    (and model.py), with the model-level keys (``traffic``, ``shadow``, ...) added to it."""
    path = folder / "model.yaml"
    config = load_yaml(path)
    config.pop("version", None)
    path.write_text(yaml.safe_dump({**config, **model_keys}))
    for number in range(1, count + 1):
        (folder / str(number)).mkdir()


# Background series: the fixture waits for each before it reads /metrics for the tests.
BACKGROUND_SERIES = (
    "inference_engine_dropped_inputs_total{",
    "inference_engine_watchdog_restarts_total{",
    "inference_engine_shadow_score_difference_bucket{",
    "inference_engine_shadow_cosine_similarity_bucket{",
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exposition]:
    repo = tmp_path_factory.mktemp("observability-repo")
    add_colour_model(repo, "colour")
    add_colour_text_model(repo, "zero_shot")
    add_colour_model(repo, "poison", fail_batch_on_blue=True)
    queue_only = {"max_batch_size": 1, "admission": "queue_only"}  # queues what predictive would refuse
    add_colour_model(repo, "slow", delay_s=0.6, settings=queue_only)
    add_colour_model(repo, "predictive", delay_s=0.3)  # the default admission: predictive
    # 1024 bytes hold four of the colour model's outputs (3 float32 + 200 bytes of overhead each).
    add_colour_model(repo, "cached", settings={"cache": {"enabled": True, "max_bytes": 1024}})
    add_colour_model(repo, "merging", delay_s=0.5, settings={"cache": {"merge_in_flight": True}})
    add_colour_model(repo, "hangs", hang_on_blue_s=4, settings={"max_batch_size": 1})
    add_model(repo, "broken", {"handler": "torchscript", "weights": "missing.pt"})
    shadowed = {"version_policy": "all", "traffic": {"1": 100}, "shadow": {"2": 100}}
    add_versions(add_colour_model(repo, "versioned"), 2, **shadowed)  # top-1 and score difference
    add_versions(add_colour_text_model(repo, "versioned_text"), 2, **shadowed)  # cosine similarity
    env = {
        "IE_SERVER__DEFAULT_MODEL": "colour",
        "IE_SERVER__MODEL_CONTROL": "true",
        "IE_WATCHDOG__MAX_FORWARD_S": "1.0",
        "IE_WATCHDOG__CHECK_INTERVAL_S": "0.1",
        # Shared rate limits with a Redis that is not there (a closed port): every request is
        # served by the fail-open path, which gives the store's gauge and counter their samples.
        "IE_RATE_LIMIT__ENABLED": "true",
        "IE_RATE_LIMIT__RATE": "1000",
        "IE_RATE_LIMIT__BURST": "1000",
        "IE_RATE_LIMIT__BACKEND": "redis",
        "IE_RATE_LIMIT__REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
    }
    server = ServerProcess(repo, env=env)
    server.start(tmp_path_factory.mktemp("observability-logs") / "server.log")
    try:
        asyncio.run(_drive(server))
        with httpx.Client(base_url=server.url, timeout=10) as client:
            deadline = time.monotonic() + 15
            while True:  # the dropped input, the restart and shadows are counted in the background
                text = client.get("/metrics").text
                if all(s in text for s in BACKGROUND_SERIES) or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
        yield parse_exposition(text + cuda_exposition())
    finally:
        server.stop()


def cuda_exposition() -> str:
    """What a CUDA replica adds (no GPU here): the GPU gauges over two stand-in devices."""
    registry = CollectorRegistry()
    watch_cuda(registry, FakeCuda())
    return generate_latest(registry).decode()


# -- names and labels against the real server --------------------------------------------------


def all_expressions() -> list[tuple[str, str]]:
    return rule_expressions() + [(w, e) for w, e, _ in dashboard_expressions()] + variable_queries()


@pytest.mark.integration
def test_the_server_exports_every_family_it_declares_with_samples(exported: Exposition) -> None:
    """The traffic above reached every code path: each family has real series to check labels on."""
    empty = [f for f in exported.families if f.startswith("inference_engine_") and not any(
        n.startswith(f) and n in exported.labels for n in exported.sample_names
    )]  # fmt: skip
    assert not empty, f"no samples for {empty}; the test's traffic no longer reaches them"


@pytest.mark.integration
def test_the_traffic_reached_admission_the_cache_and_merging(exported: Exposition) -> None:
    """Not just children at 0: the refusal, the cache's hits, misses and eviction, and the merge
    that the dashboard's admission and cache row draws happened."""

    def value(name: str, model: str, **labels: str) -> float:
        return metric_value(exported.text, name, model=model, version="1", **labels)

    assert value("inference_engine_admission_refusals_total", "predictive", reason="deadline") == 1
    assert value("inference_engine_admission_refusals_total", "slow", reason="deadline") == 0
    assert value("inference_engine_admission_prediction_error_seconds_count", "predictive") >= 1
    assert value("inference_engine_cache_lookups_total", "cached", result="hit") == 1
    assert value("inference_engine_cache_lookups_total", "cached", result="miss") == 6
    assert value("inference_engine_cache_evictions_total", "cached") == 2
    assert value("inference_engine_cache_entries", "cached") == 4
    assert value("inference_engine_cache_bytes", "cached") == 4 * (3 * 4 + 200)
    assert value("inference_engine_merged_inputs_total", "merging") == 1
    assert value("inference_engine_dropped_inputs_total", "slow") >= 1


@pytest.mark.integration
def test_every_metric_in_every_expression_is_exported(exported: Exposition) -> None:
    unknown = [
        f"{where}: {name}"
        for where, expr in all_expressions()
        for name in METRIC_NAME.findall(expr)
        if name not in exported.sample_names
    ]
    assert not unknown, "metrics the server does not export:\n" + "\n".join(unknown)


@pytest.mark.integration
def test_metric_names_in_descriptions_are_exported(exported: Exposition) -> None:
    """Annotations and panel descriptions may name a family (a histogram) or a series."""
    texts = [(f"alert {r['alert']}", json.dumps(r.get("annotations", {}))) for r in alert_rules()]
    texts += [(f"panel {p['id']}", p.get("description", "")) for p in dashboard_panels()]
    known = exported.sample_names | set(exported.families)
    unknown = [f"{where}: {n}" for where, text in texts for n in METRIC_NAME.findall(text) if n not in known]
    assert not unknown, "\n".join(unknown)


def result_labels(expr: str, labels: dict[str, set[str]]) -> set[str]:
    """The labels of an expression's result: those of its aggregations' groupings, or, with no
    aggregation, those of its series (plus the target's)."""
    groupings = GROUPING.findall(expr)
    if groupings:  # the result carries the labels of the outermost aggregation's grouping
        return {p.strip() for clause in groupings for p in clause.split(",") if p.strip()}
    if AGGREGATION.search(expr):  # sum(...) and the like, without a grouping: no labels
        return set()
    found = set(TARGET_LABELS)
    for name in METRIC_NAME.findall(expr):
        found |= labels.get(name, set())
    return found


def label_problems(
    expressions: list[tuple[str, str]], legends: list[tuple[str, str, str]], labels: dict[str, set[str]]
) -> list[str]:
    """Labels used in selectors, groupings, variables and legends that the series do not have
    (``labels``: series name -> its label names)."""
    problems = []
    for where, expr in expressions:
        used = set(METRIC_NAME.findall(expr))
        available = set(TARGET_LABELS)
        for name in used:
            available |= labels.get(name, set())
        for name, body in SELECTOR.findall(expr):
            for label in MATCHER.findall(body):
                if label not in labels.get(name, set()) | TARGET_LABELS:
                    problems.append(f"{where}: {name} has no label {label!r}")
        for clause in GROUPING.findall(expr):
            for label in (part.strip() for part in clause.split(",")):
                if label and label not in available:
                    problems.append(f"{where}: grouping by {label!r}, which none of {sorted(used)} has")
        if where.startswith("variable"):
            match = re.search(r"label_values\(\s*(inference_engine_[a-z0-9_]+)\s*,\s*(\w+)\s*\)", expr)
            assert match, f"{where}: expected label_values(metric, label), got {expr!r}"
            if match.group(2) not in labels.get(match.group(1), set()) | TARGET_LABELS:
                problems.append(f"{where}: {match.group(1)} has no label {match.group(2)!r}")
    for where, expr, legend in legends:
        found = result_labels(expr, labels)
        for label in LEGEND_LABEL.findall(legend):
            if label not in found:
                problems.append(f"{where}: legend uses {{{{{label}}}}}, not a label of the result")
    return problems


@pytest.mark.integration
def test_label_names_in_selectors_groupings_and_legends_exist(exported: Exposition) -> None:
    problems = label_problems(all_expressions(), dashboard_expressions(), exported.labels)
    assert not problems, "\n".join(problems)


# -- the alert rules ---------------------------------------------------------------------------


def test_rules_file_structure() -> None:
    data = load_yaml(ALERTS)
    assert set(data) == {"groups"}
    groups = data["groups"]
    assert groups, "no rule groups"
    names = [g["name"] for g in groups]
    assert len(names) == len(set(names)), f"duplicate group names: {names}"
    alerts: list[str] = []
    for group in groups:
        assert set(group) <= {"name", "interval", "rules", "limit"}, group.keys()
        assert group["rules"], f"group {group['name']} has no rules"
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}, rule
            name = rule.get("alert")
            assert isinstance(name, str) and re.fullmatch(r"InferenceEngine[A-Z][A-Za-z0-9]+", name), name
            alerts.append(name)
            assert isinstance(rule.get("expr"), str) and rule["expr"].strip(), f"{name}: no expr"
            assert DURATION.match(str(rule.get("for", ""))), f"{name}: `for` must be a duration"
            assert rule.get("labels", {}).get("severity") in SEVERITIES, f"{name}: severity label"
            annotations = rule.get("annotations", {})
            for key in ("summary", "description", "runbook_url"):
                assert isinstance(annotations.get(key), str) and annotations[key].strip(), f"{name}: {key}"
            runbook = re.escape(DOCS_BASE) + r"docs/OPERATIONS\.md#[a-z0-9_-]+"
            assert re.fullmatch(runbook, annotations["runbook_url"]), name
    assert len(alerts) == len(set(alerts)), f"duplicate alert names: {alerts}"


def test_rules_cover_the_operational_signals() -> None:
    by_name = {rule["alert"]: rule for rule in alert_rules()}
    exprs = " ".join(rule["expr"] for rule in by_name.values())
    for needed in (
        "inference_engine_model_ready",
        "inference_engine_requests_total",
        "inference_engine_queue_depth",
        'type="queue_full"',
        'type="deadline_unmeetable"',
        "inference_engine_request_duration_seconds_bucket",
        "inference_engine_watchdog_restarts_total",
        "inference_engine_model_load_failures_total",
        "inference_engine_shadow_agreement_ratio",
        "inference_engine_rate_limit_store_up",
        "process_resident_memory_bytes",
        "process_start_time_seconds",
    ):
        assert needed in exprs, f"no alert uses {needed}"
    shadow = by_name[SHADOW_ALERT]
    assert shadow["for"] == "15m"
    assert "(inference_engine_shadow_agreement_ratio) < 0.95" in shadow["expr"]
    assert by_name["InferenceEngineModelNotReady"]["for"] == "2m"
    assert by_name["InferenceEngineHighErrorRatio"]["for"] == "5m"
    assert by_name["InferenceEngineHighLatencyP99"]["for"] == "10m"
    assert by_name["InferenceEngineDeadlineRefusals"]["for"] == "10m"
    assert "histogram_quantile(0.99" in by_name["InferenceEngineHighLatencyP99"]["expr"]
    watchdog = by_name["InferenceEngineWatchdogRestart"]["expr"]
    assert "increase(inference_engine_watchdog_restarts_total[15m])" in watchdog


def test_target_down_alert_watches_the_scrape_job() -> None:
    jobs = {job["job_name"] for job in load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]}
    for rule in alert_rules():
        for job in re.findall(r'job="([^"]+)"', rule["expr"]):
            assert job in jobs, f"{rule['alert']} selects job {job!r}, which prometheus.yml does not scrape"


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a document's headings (and explicit <a id/name> anchors)."""
    anchors: set[str] = set(re.findall(r"<a\s+(?:id|name)=\"([^\"]+)\"", markdown))
    seen: dict[str, int] = {}
    in_fence = False
    for line in markdown.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            in_fence = not in_fence
        if in_fence:
            continue
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", match[1]).replace("`", "").replace("*", "")
        kept = (c for c in text.lower() if c in " -_" or unicodedata.category(c)[0] in "LN")
        slug = "".join(kept).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def test_runbook_urls_point_at_headings_of_the_operations_guide() -> None:
    if not RUNBOOK.exists():
        pytest.skip(f"{RUNBOOK.relative_to(ROOT)} does not exist yet")
    anchors = github_anchors(RUNBOOK.read_text(encoding="utf-8"))
    missing = []
    for rule in alert_rules():
        path, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert path == f"{DOCS_BASE}docs/OPERATIONS.md"
        if anchor not in anchors:
            missing.append(f"{rule['alert']}: #{anchor}")
    assert not missing, "docs/OPERATIONS.md has no heading for:\n" + "\n".join(missing)


def test_scrape_config() -> None:
    config = load_yaml(PROMETHEUS_CONFIG)
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "inference-engine"]
    assert job["metrics_path"] == "/metrics"
    assert job["scrape_interval"] == "5s"
    targets = [t for static in job["static_configs"] for t in static["targets"]]
    assert targets == ["inference-engine:8000"]


# -- promtool ----------------------------------------------------------------------------------


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.skip("promtool is not installed (Debian package `prometheus`); structural checks still ran")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_config(tmp_path: Path) -> None:
    config = load_yaml(PROMETHEUS_CONFIG)
    config["rule_files"] = [str(ALERTS)]  # compose mounts it at /etc/prometheus/alerts.yml
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    result = promtool("check", "config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    rules = []
    for index, (where, expr) in enumerate([(w, e) for w, e, _ in dashboard_expressions()]):
        for variable, value in sorted(GRAFANA_VARIABLES.items(), key=lambda kv: -len(kv[0])):
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"{where}: unknown Grafana variable in {expr!r}"
        rules.append({"record": f"dashboard:query_{index}", "expr": expr})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


TARGET = {"job": "inference-engine", "instance": "inference-engine:8000"}


def _series(name: str, values: str, **labels: str) -> dict[str, str]:
    labels = {**TARGET, **labels}
    body = ", ".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{body}}}", "values": values}


def _firing(alert: str, at: str, severity: str, **labels: str) -> dict[str, Any]:
    expected = {**TARGET, "severity": severity, **labels}
    return {"eval_time": at, "alertname": alert, "exp_alerts": [{"exp_labels": expected}]}


def _silent(alert: str, at: str) -> dict[str, Any]:
    return {"eval_time": at, "alertname": alert, "exp_alerts": []}


def _bucket_series(model: str, per_minute: dict[str, int]) -> list[dict[str, str]]:
    """request_duration buckets growing by ``per_minute[le]`` observations a minute."""
    name = "inference_engine_request_duration_seconds_bucket"
    return [_series(name, f"0+{n}x30", model=model, route="/predict", le=le) for le, n in per_minute.items()]


def _requests(values: str, model: str, status: str, route: str = "/predict") -> dict[str, str]:
    return _series("inference_engine_requests_total", values, model=model, route=route, status=status)


def _agreement(values: str, model: str, shadow: str) -> dict[str, str]:
    """inference_engine_shadow_agreement_ratio of version ``shadow`` against version 1."""
    name = "inference_engine_shadow_agreement_ratio"
    return _series(name, values, model=model, primary="1", shadow=shadow)


def _shadowed(values: str, model: str, shadow: str, outcome: str = "compared") -> dict[str, str]:
    """inference_engine_shadow_requests_total of version ``shadow`` against version 1."""
    name = "inference_engine_shadow_requests_total"
    return _series(name, values, model=model, primary="1", shadow=shadow, outcome=outcome)


ALERT_UNIT_TESTS: list[dict[str, Any]] = [
    {
        "name": "target down",
        "interval": "1m",
        "input_series": [
            {"series": 'up{job="inference-engine", instance="inference-engine:8000"}', "values": "1 0 0 0"}
        ],
        "alert_rule_test": [
            _silent("InferenceEngineTargetDown", "1m"),
            _firing("InferenceEngineTargetDown", "3m", "critical"),
        ],
    },
    {
        "name": "model not ready for 2 minutes",
        "interval": "1m",
        "input_series": [
            _series("inference_engine_model_ready", "1 0 0 0 0 0", model="m"),
            _series("inference_engine_model_ready", "1 1 1 1 1 1", model="ok"),
        ],
        "alert_rule_test": [
            _silent("InferenceEngineModelNotReady", "2m"),
            _firing("InferenceEngineModelNotReady", "3m", "critical", model="m"),
        ],
    },
    {
        "name": "model load failure",
        "interval": "1m",
        "input_series": [_series("inference_engine_model_load_failures_total", "_ 1 1 1", model="broken")],
        "alert_rule_test": [
            _silent("InferenceEngineModelLoadFailed", "0m"),
            _firing("InferenceEngineModelLoadFailed", "1m", "critical", model="broken"),
        ],
    },
    {
        "name": "watchdog restarts, including the first one of a series",
        "interval": "1m",
        "input_series": [
            # absent for 20 minutes, then its first restart (a new series at 1), a second at 50m
            _series("inference_engine_watchdog_restarts_total", "_x19 1x30 2x10", model="m", reason="hung"),
        ],
        "alert_rule_test": [
            _silent("InferenceEngineWatchdogRestart", "10m"),
            _firing("InferenceEngineWatchdogRestart", "22m", "warning", model="m", reason="hung"),
            _silent("InferenceEngineWatchdogRestart", "45m"),
            _firing("InferenceEngineWatchdogRestart", "55m", "warning", model="m", reason="hung"),
        ],
    },
    {
        "name": "5xx ratio above 5% for 5 minutes",
        "interval": "1m",
        "input_series": [
            _requests("0+90x20", model="bad", status="200"),
            _requests("0+10x20", model="bad", status="503"),
            _requests("0+98x20", model="good", status="200"),
            _requests("0+2x20", model="good", status="500"),
            # /ready's 503 while loading is not an inference error
            _requests("0+50x20", model="", status="503", route="/ready"),
        ],
        "alert_rule_test": [
            _silent("InferenceEngineHighErrorRatio", "5m"),
            _firing("InferenceEngineHighErrorRatio", "12m", "critical", model="bad"),
        ],
    },
    {
        "name": "p99 latency above 2 s for 10 minutes",
        "interval": "1m",
        "input_series": [
            *_bucket_series("slow", {"0.5": 0, "1.0": 0, "2.5": 0, "5.0": 10, "+Inf": 10}),
            *_bucket_series("fast", {"0.5": 10, "1.0": 10, "2.5": 10, "5.0": 10, "+Inf": 10}),
        ],
        "alert_rule_test": [
            _silent("InferenceEngineHighLatencyP99", "10m"),
            _firing("InferenceEngineHighLatencyP99", "20m", "warning", model="slow"),
        ],
    },
    {
        "name": "queue above 80% of max_queue_size",
        "interval": "1m",
        "input_series": [
            _series("inference_engine_queue_depth", "0 250x10", model="full"),
            _series("inference_engine_queue_depth", "0 100x10", model="busy"),
        ],
        "alert_rule_test": [
            _silent("InferenceEngineQueueSaturated", "2m"),
            _firing("InferenceEngineQueueSaturated", "6m", "warning", model="full"),
        ],
    },
    {
        "name": "load shedding (503 queue_full) above 1%",
        "interval": "1m",
        "input_series": [
            _requests("0+97x20", model="m", status="200"),
            _requests("0+3x20", model="m", status="503"),
            _series("inference_engine_errors_total", "0+3x20", model="m", type="queue_full"),
        ],
        "alert_rule_test": [
            _silent("InferenceEngineLoadShedding", "5m"),
            _firing("InferenceEngineLoadShedding", "12m", "warning", model="m"),
            _silent("InferenceEngineHighErrorRatio", "12m"),  # 3% is below the error-ratio alert
        ],
    },
    {
        "name": "more than 1% of requests refused with 503 deadline_unmeetable for 10 minutes",
        "interval": "1m",
        "input_series": [
            _requests("0+97x30", model="m", status="200"),
            _requests("0+3x30", model="m", status="503"),
            _series("inference_engine_errors_total", "0+3x30", model="m", type="deadline_unmeetable"),
            # 0.5%: a client now and then with a deadline too short
            _requests("0+199x30", model="ok", status="200"),
            _requests("0+1x30", model="ok", status="503"),
            _series("inference_engine_errors_total", "0+1x30", model="ok", type="deadline_unmeetable"),
            # shed for a full queue: the load-shedding alert's, not this one's
            _requests("0+97x30", model="shed", status="200"),
            _requests("0+3x30", model="shed", status="503"),
            _series("inference_engine_errors_total", "0+3x30", model="shed", type="queue_full"),
        ],
        "alert_rule_test": [
            _silent("InferenceEngineDeadlineRefusals", "8m"),  # above 1% since 1m: not yet 10 minutes
            _firing("InferenceEngineDeadlineRefusals", "14m", "warning", model="m"),
            _silent("InferenceEngineHighErrorRatio", "14m"),  # 3% is below the error-ratio alert
        ],
    },
    {
        "name": "a shadow agreeing with its primary on fewer than 95% of inputs for 15 minutes",
        "interval": "1m",
        "input_series": [
            # 50 comparisons by 5m (shed copies do not count), then 15 minutes below 0.95: fires at 20m
            _agreement("0.9x40", model="m", shadow="2"),
            _shadowed("0+10x40", model="m", shadow="2"),
            _shadowed("0+50x40", model="m", shadow="2", outcome="shed"),
            # agrees
            _agreement("0.99x40", model="m", shadow="3"),
            _shadowed("0+10x40", model="m", shadow="3"),
            # too few comparisons to say
            _agreement("0.5x40", model="rare", shadow="2"),
            _shadowed("2x40", model="rare", shadow="2"),
        ],
        "alert_rule_test": [
            _silent(SHADOW_ALERT, "4m"),
            _silent(SHADOW_ALERT, "18m"),
            _firing(SHADOW_ALERT, "22m", "warning", model="m", primary="1", shadow="2"),
        ],
    },
    {
        "name": "a replica that cannot reach Redis for its rate limits for 2 minutes",
        "interval": "1m",
        "input_series": [_series("inference_engine_rate_limit_store_up", "1 1 0 0 0 0 1", backend="redis")],
        "alert_rule_test": [
            _silent("InferenceEngineRateLimitStoreDown", "3m"),  # down for 1 minute: could be a blip
            _firing("InferenceEngineRateLimitStoreDown", "4m", "warning", backend="redis"),
            _silent("InferenceEngineRateLimitStoreDown", "6m"),  # back
        ],
    },
    {
        "name": "resident memory growing steadily for 2 hours, after the first hour of uptime",
        "interval": "1m",
        "input_series": [
            # 1 GB growing 4 MB a minute (24% an hour at first, 12% at the end), started at 0
            _series("process_resident_memory_bytes", "1e9+4e6x300", instance="leaky:8000"),
            _series("process_start_time_seconds", "0x300", instance="leaky:8000"),
            # flat at 2 GB
            _series("process_resident_memory_bytes", "2e9x300", instance="steady:8000"),
            _series("process_start_time_seconds", "0x300", instance="steady:8000"),
        ],
        "alert_rule_test": [
            _silent("InferenceEngineMemoryGrowth", "170m"),  # growing since 60m: not yet 2 hours
            _firing("InferenceEngineMemoryGrowth", "185m", "warning", instance="leaky:8000"),
        ],
    },
    {
        "name": "a process that started three times within an hour",
        "interval": "1m",
        "input_series": [
            _series("process_start_time_seconds", "0x10 600x10 1200x10 1800x30"),
            _series("process_start_time_seconds", "0x63", instance="stable:8000"),
        ],
        "alert_rule_test": [
            _silent("InferenceEngineRestarting", "25m"),  # two restarts
            _firing("InferenceEngineRestarting", "35m", "critical"),
        ],
    },
]


def test_promtool_alert_unit_tests(tmp_path: Path) -> None:
    """Each alert fires on the series it is meant for, after its `for`, and not on the others.

    Annotations are dropped from the copy under test (their templates are checked by
    `promtool check rules`), so the expectations name labels only.
    """
    rules = load_yaml(ALERTS)
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(rules))
    tested = {t["alertname"] for case in ALERT_UNIT_TESTS for t in case["alert_rule_test"]}
    assert tested == {rule["alert"] for rule in alert_rules()}, "every alert needs a unit test"
    tests = {"rule_files": ["alerts.yml"], "evaluation_interval": "1m", "tests": ALERT_UNIT_TESTS}
    (tmp_path / "alerts_test.yml").write_text(yaml.safe_dump(tests, sort_keys=False))
    result = promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


# -- Grafana -----------------------------------------------------------------------------------


def provisioned_datasource() -> dict[str, Any]:
    (source,) = load_yaml(DATASOURCES)["datasources"]
    return dict(source)


def test_provisioned_datasource_and_dashboard_provider() -> None:
    source = provisioned_datasource()
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    assert source["uid"]
    providers = load_yaml(DASHBOARD_PROVIDERS)["providers"]
    assert [p["options"]["path"] for p in providers if p["type"] == "file"] == ["/var/lib/grafana/dashboards"]


def test_dashboard_structure() -> None:
    board = dashboard()
    assert 36 <= board["schemaVersion"] <= 41
    assert board["uid"] and board["title"]
    uid = provisioned_datasource()["uid"]
    panels = dashboard_panels()
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    occupied: dict[tuple[int, int], int] = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in occupied, f"panels {occupied[(x, y)]} and {panel['id']} overlap"
                occupied[(x, y)] = panel["id"]
        if panel["type"] == "row":
            continue
        assert panel["title"] and panel.get("description"), f"panel {panel['id']}: title and description"
        assert panel["datasource"]["uid"] == uid, f"panel {panel['id']} uses another data source"
        targets = panel.get("targets", [])
        assert targets, f"panel {panel['id']} {panel['title']!r} has no targets"
        refs = [t["refId"] for t in targets]
        assert len(refs) == len(set(refs)), f"panel {panel['id']}: duplicate refIds"
        for target in targets:
            assert target.get("expr", "").strip(), f"panel {panel['id']} target {target['refId']}: no expr"
            assert target["datasource"]["uid"] == uid
            for window in RANGE_WINDOW.findall(target["expr"]):
                assert window == "$__rate_interval", f"panel {panel['id']}: [{window}]"


def test_dashboard_model_variable() -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    model = variables["model"]
    assert model["type"] == "query"
    assert model["query"]["query"] == "label_values(inference_engine_model_ready, model)"
    assert model["datasource"]["uid"] == provisioned_datasource()["uid"]
    # "All" must not match model="" (the operational routes' series).
    assert model["includeAll"] and model["allValue"] == ".+"
    used = {v for _, expr, _ in dashboard_expressions() for v in re.findall(r"\$(\w+)", expr)}
    assert used - {"__rate_interval", "__range", "__interval"} <= set(variables)


def test_dashboard_namespace_and_pod_variables_filter_every_query() -> None:
    """On a cluster the dashboard narrows to one namespace or pod; without Kubernetes labels
    (docker compose) "All" (``.*``) still matches every series."""
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    for name in ("namespace", "pod"):
        variable = variables[name]
        assert variable["query"]["query"] == f"label_values(inference_engine_build_info, {name})"
        assert variable["includeAll"] and variable["allValue"] == ".*"
    selector = re.compile(r"\b(?:inference_engine|process|python)_[a-z0-9_]+(\{[^}]*\})?")
    unfiltered = [
        f"{where}: {match.group(0)}"
        for where, expr, _ in dashboard_expressions()
        for match in selector.finditer(expr)
        if not match.group(1)
        or 'namespace=~"$namespace"' not in match.group(1)
        or 'pod=~"$pod"' not in match.group(1)
    ]
    assert not unfiltered, "\n".join(unfiltered)


def test_dashboard_covers_the_operational_signals() -> None:
    exprs = {expr for _, expr, _ in dashboard_expressions()}
    joined = "\n".join(exprs)
    for needed in (
        "rate(inference_engine_requests_total",
        "histogram_quantile(0.5, sum by (le, model) (rate(inference_engine_request_duration_seconds_bucket",
        "histogram_quantile(0.95, sum by (le, model) (rate(inference_engine_request_duration_seconds_bucket",
        "histogram_quantile(0.99, sum by (le, model) (rate(inference_engine_request_duration_seconds_bucket",
        "inference_engine_queue_depth",
        "rate(inference_engine_batch_size_sum",
        "rate(inference_engine_batch_size_count",
        "inference_engine_batch_size_bucket",
        "sum by (type, model) (rate(inference_engine_errors_total",
        "inference_engine_model_ready",
        "inference_engine_inference_duration_seconds_bucket",
        "inference_engine_queue_wait_seconds_bucket",
        "inference_engine_in_flight_requests",
        "inference_engine_watchdog_restarts_total",
        'status="429"',
        'type="queue_full"',
    ):
        assert needed in joined, f"no panel queries {needed}"
    heatmaps = [p for p in dashboard_panels() if p["type"] == "heatmap"]
    assert heatmaps and all(t.get("format") == "heatmap" for p in heatmaps for t in p["targets"])


# -- versions: the metrics as the model-versions change defines them ---------------------------


def versioned_series() -> dict[str, set[str]]:
    """Every series name of ``VERSIONED_FAMILIES`` (with its suffixes) -> its label names."""
    series: dict[str, set[str]] = {}
    for family, (kind, labels) in VERSIONED_FAMILIES.items():
        for suffix in SUFFIXES[kind]:
            series[family + suffix] = set(labels) | ({"le"} if suffix == "_bucket" else set())
    return series


def declared_families() -> dict[str, tuple[str, tuple[str, ...]]]:
    """What metrics.py declares: family name -> (type, label names), from a fresh Metrics."""
    from prometheus_client.metrics import MetricWrapperBase

    declared = {}
    for metric in vars(Metrics()).values():
        if isinstance(metric, MetricWrapperBase):
            declared[metric._name] = (metric._type, tuple(metric._labelnames))
    return declared


def test_metrics_module_declares_the_versioned_families() -> None:
    """metrics.py declares every family of VERSIONED_FAMILIES, of its type, with its labels in order."""
    declared = declared_families()
    wrong = [
        f"{name}: metrics.py has {declared.get(name)}, expected {(kind, labels)}"
        for name, (kind, labels) in VERSIONED_FAMILIES.items()
        if declared.get(name) != (kind, labels)
    ]
    assert not wrong, "\n".join(wrong)
    # Every per-model family of metrics.py has a version (or is a version pair's).
    unversioned = [
        name for name, (_, labels) in declared.items()
        if "model" in labels and "version" not in labels and name not in VERSIONED_FAMILIES
    ]  # fmt: skip
    assert not unversioned, f"per-model families without a version label: {unversioned}"


def test_the_versions_row_and_the_shadow_alert_use_versioned_families() -> None:
    series = versioned_series()
    versions = dashboard_expressions(row_panels(VERSIONS_ROW))
    shadow = [(w, e) for w, e in rule_expressions() if w == f"alert {SHADOW_ALERT}"]
    assert versions and shadow
    unknown = [
        f"{where}: {name}"
        for where, expr in [(w, e) for w, e, _ in versions] + shadow
        for name in METRIC_NAME.findall(expr)
        if name not in series
    ]
    assert not unknown, "not in VERSIONED_FAMILIES:\n" + "\n".join(unknown)


def test_label_names_fit_the_versioned_families() -> None:
    """Every expression over VERSIONED_FAMILIES (all of the dashboard's and the alerts', today)
    uses only their labels, and its legend only the labels of its result."""
    series = versioned_series()

    def covered(expr: str) -> bool:
        names = METRIC_NAME.findall(expr)
        return bool(names) and all(name in series for name in names)

    expressions = [(w, e) for w, e in all_expressions() if covered(e)]
    legends = [(w, e, legend) for w, e, legend in dashboard_expressions() if covered(e)]
    process_ids = {p["id"] for p in row_panels(PROCESS_ROW)}
    per_model = [x for x in dashboard_expressions() if int(x[0].split()[1]) not in process_ids]
    assert len(legends) == len(per_model), "a dashboard query uses a family not listed"
    problems = label_problems(expressions, legends, series)
    assert not problems, "\n".join(problems)


def test_every_dashboard_series_is_told_apart_by_its_legend() -> None:
    """A query's result keeps no label its legend does not show: with a version label on every
    per-model series, a query that did not aggregate it away would draw one line per version
    under one legend."""
    series = versioned_series()
    problems = []
    for where, expr, legend in dashboard_expressions():
        shown = set(LEGEND_LABEL.findall(legend))
        hidden = result_labels(expr, series) - shown - TARGET_LABELS - {"le"}
        if hidden:
            problems.append(f"{where}: the result has {sorted(hidden)}, which {legend!r} does not show")
    assert not problems, "\n".join(problems)


def test_dashboard_covers_the_versions() -> None:
    panels = row_panels(VERSIONS_ROW)
    (row,) = [p for p in dashboard()["panels"] if p["type"] == "row" and p["title"] == VERSIONS_ROW]
    mine = {row["id"]} | {p["id"] for p in panels}
    others = [p for p in dashboard_panels() if p["id"] not in mine]
    assert row["gridPos"]["y"] >= max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in others)
    assert all(p["gridPos"]["y"] > row["gridPos"]["y"] for p in panels)
    joined = "\n".join(expr for _, expr, _ in dashboard_expressions(panels))
    by_version = "sum by (le, model, version) (rate(inference_engine_request_duration_seconds_bucket"
    by_pair = "sum by (le, model, primary, shadow) (rate(inference_engine_shadow_"
    for needed in (
        # traffic share: each version's requests over its model's
        "sum by (model, version) (rate(inference_engine_requests_total",
        "/ on (model) group_left ()\nsum by (model) (rate(inference_engine_requests_total",
        "inference_engine_traffic_weight",
        f"histogram_quantile(0.5, {by_version}",
        f"histogram_quantile(0.99, {by_version}",
        'status!~"2.."',
        "inference_engine_shadow_agreement_ratio",
        "rate(inference_engine_shadow_top1_agreements_total",
        f"histogram_quantile(0.5, {by_pair}score_difference_bucket",
        f"histogram_quantile(0.5, {by_pair}cosine_similarity_bucket",
        "inference_engine_shadow_requests_total",
        "sum by (model, operation, outcome) (increase(inference_engine_repository_operations_total",
    ):
        assert needed in joined, f"no panel of the {VERSIONS_ROW} row queries {needed}"


def test_dashboard_covers_admission_and_the_cache() -> None:
    """The admission and cache row draws every family of predictive admission, the output cache
    and merging, and the share of requests refused against the deadline-refusal alert's threshold."""
    panels = row_panels(ADMISSION_ROW)
    joined = "\n".join(expr for _, expr, _ in dashboard_expressions(panels))
    families = (
        "inference_engine_admission_refusals",
        "inference_engine_admission_prediction_error_seconds",
        "inference_engine_admission_predictions",
        "inference_engine_cache_lookups",
        "inference_engine_cache_bytes",
        "inference_engine_cache_entries",
        "inference_engine_cache_evictions",
        "inference_engine_merged_inputs",
    )
    used = set(METRIC_NAME.findall(joined))
    for family in families:
        kind, _ = VERSIONED_FAMILIES[family]
        series = {family + suffix for suffix in SUFFIXES[kind]}
        assert used & series, f"the {ADMISSION_ROW} row draws no {family}"
    for needed in (
        "sum by (model, reason) (rate(inference_engine_admission_refusals_total",
        'type="deadline_unmeetable"',
        # mean |error| and p90 of the prediction
        "sum by (model) (rate(inference_engine_admission_prediction_error_seconds_sum",
        "/ sum by (model) (rate(inference_engine_admission_prediction_error_seconds_count",
        "histogram_quantile(0.9, sum by (le, model) (rate("
        "inference_engine_admission_prediction_error_seconds_bucket",
        'outcome="late"',
        'result="hit"',
        "rate(inference_engine_merged_inputs_total",
    ):
        assert needed in joined, f"no panel of the {ADMISSION_ROW} row queries {needed}"
    (refused,) = [p for p in panels if any('type="deadline_unmeetable"' in t["expr"] for t in p["targets"])]
    (rule,) = [r for r in alert_rules() if r["alert"] == "InferenceEngineDeadlineRefusals"]
    threshold = float(rule["expr"].rsplit(">", 1)[1])
    steps = refused["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [step["value"] for step in steps if step["value"] is not None] == [threshold]
