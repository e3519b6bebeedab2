"""Model control without a restart: load, unload and list models from the repository folder.

The V2 repository extension as Triton implements it (``tritonclient``'s ``load_model``,
``unload_model`` and ``get_model_repository_index`` work unchanged). A load re-reads a model's
folder and brings its served versions in line with it: versions new or changed on disk are
loaded, warmed and pass their canary *before* the routing moves to them; versions no longer
wanted leave the routing at once and are released only after the requests they accepted are
answered. A load that fails anywhere leaves what was serving untouched and says why (the
index keeps the reason). One load or unload of a model runs at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from inference_engine.answers import IndexEntry
from inference_engine.errors import BadRequest, Forbidden, LoadFailed, ModelNotFound
from inference_engine.models.loader import MODEL_FILE, ModelSpec, discover, scan_model
from inference_engine.routing import ServedModel
from inference_engine.runtime import ModelRuntime, ModelState
from inference_engine.settings import BatchingSettings, ServerSettings

if TYPE_CHECKING:
    from inference_engine.service import InferenceService

logger = logging.getLogger("inference_engine.control")

Fingerprint = tuple[tuple[str, int, int], ...]


@dataclass(frozen=True)
class ModelRepository:
    """Where model control reads model folders from, and the batching defaults they resolve with."""

    path: Path
    defaults: BatchingSettings = field(default_factory=BatchingSettings)
    # How long a retired version may take to answer what it accepted before it is released.
    drain_timeout_s: float = 30.0


def fingerprint(directory: Path, *, with_config: bool = True) -> Fingerprint:
    """Every file under ``directory`` with its size and modification time (``model.yaml`` left
    out unless ``with_config``: its settings are compared as parsed, so a traffic change alone
    reloads nothing)."""
    found = []
    for path in sorted(directory.rglob("*")):
        with contextlib.suppress(OSError):
            if (
                not path.is_file()
                or "__pycache__" in path.parts
                or (path.name == MODEL_FILE and not with_config)
            ):
                continue
            stat = path.stat()
            found.append((str(path.relative_to(directory)), stat.st_size, stat.st_mtime_ns))
    return tuple(found)


def _version_fingerprint(spec: ModelSpec, model_dir: Path) -> Fingerprint:
    """A version's own files and the model folder's shared ones (not other versions'): new
    weights under the same name reload that version."""
    if spec.directory == model_dir:
        return fingerprint(model_dir, with_config=False)
    shared = tuple(
        (p.name, p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(model_dir.iterdir())
        if p.is_file() and p.name != MODEL_FILE
    )
    return shared + fingerprint(spec.directory, with_config=False)


class ModelControl:
    """Loads, unloads and lists models of a running service."""

    def __init__(self, service: InferenceService, repository: ModelRepository | None) -> None:
        self._service = service
        self.repository = repository
        self._loading: dict[str, list[ModelRuntime]] = {}
        self._fingerprints: dict[int, Fingerprint] = {}  # id(runtime) -> its files when loaded
        self._poll_task: asyncio.Task[None] | None = None
        self._locks: dict[str, asyncio.Lock] = {}  # one load or unload of a model at a time

    # -- the index ---------------------------------------------------------------------------

    def index(self, ready_only: bool = False) -> list[IndexEntry]:
        """Every model of the repository and every version with its state and reason."""
        entries: list[IndexEntry] = []
        models = self._service.models
        folders = {p.name for p in discover(self.repository.path)} if self.repository else set()
        for name in sorted(folders | set(models)):
            model = models.get(name)
            if model is None:
                entries.append(IndexEntry(name, None, "UNAVAILABLE", "not loaded"))
                continue
            if model.unloaded:
                entries.append(IndexEntry(name, None, "UNAVAILABLE", "unloaded"))
            if model.error is not None and not model.versions:
                entries.append(IndexEntry(name, None, "UNAVAILABLE", model.error))
            entries.extend(_entry(runtime) for runtime in model.versions.values())
            entries.extend(_entry(r, "UNLOADING") for r in self._service.retiring if r.name == name)
            entries.extend(_entry(r) for r in self._loading.get(name, []))
            if model.last_failure is not None:
                entries.append(
                    IndexEntry(name, None, "UNAVAILABLE", f"last load failed: {model.last_failure}")
                )
        return [e for e in entries if e.state == "READY"] if ready_only else entries

    # -- load and unload ---------------------------------------------------------------------

    async def load(self, name: str) -> None:
        """Bring ``name``'s served versions in line with its folder; :class:`LoadFailed` (400) when
        the folder or a version is wrong (what served before still serves)."""
        directory = self._folder(name)
        async with self._locks.setdefault(name, asyncio.Lock()):
            try:
                await self._load(name, directory)
            except LoadFailed as exc:
                self._service.metrics.repository_operations.labels(name, "load", "failed").inc()
                current = self._service.models.get(name)
                if current is not None:
                    current.last_failure = exc.message
                logger.error("model load failed", extra={"model": name, "error": exc.message})
                raise
        self._service.metrics.repository_operations.labels(name, "load", "ok").inc()

    async def _load(self, name: str, directory: Path) -> None:
        assert self.repository is not None
        specs, broken = await asyncio.to_thread(scan_model, directory, self.repository.defaults)
        if broken:
            raise LoadFailed("; ".join(_described(b.version, b.error) for b in broken))
        service, current = self._service, self._service.models.get(name)
        keep: dict[str, ModelRuntime] = {}
        fresh: list[ModelRuntime] = []
        for spec in specs:
            prints = await asyncio.to_thread(_version_fingerprint, spec, directory)
            old = current.versions.get(spec.version) if current is not None and not current.unloaded else None
            if old is not None and _unchanged(old, spec) and self._fingerprints.get(id(old)) == prints:
                keep[spec.version] = old
                continue
            runtime = ModelRuntime(name, spec, version=spec.version)
            self._fingerprints[id(runtime)] = prints
            fresh.append(runtime)
        self._loading[name] = fresh
        try:
            await asyncio.gather(*(r.load(service.metrics, service.tracer) for r in fresh))
        finally:
            self._loading.pop(name, None)
        failed = [r for r in fresh if r.state is not ModelState.READY]
        if failed:
            await asyncio.gather(*(r.release() for r in fresh))
            for runtime in fresh:
                self._fingerprints.pop(id(runtime), None)
            raise LoadFailed("; ".join(_described(r.version, r.error or "failed") for r in failed))
        versions = {**keep, **{r.version: r for r in fresh}}
        plan = specs[0].plan
        retired = [
            r for r in (current.versions.values() if current else []) if versions.get(r.version) is not r
        ]
        if current is None:
            service.models[name] = ServedModel(name, directory, plan, versions.values())
        else:
            before = dict(current.plan.traffic)
            current.versions = {v: versions[v] for v in plan.versions}
            current.plan, current.unloaded, current.error, current.last_failure = plan, False, None, None
            if before != dict(plan.traffic):
                logger.info(
                    "traffic changed", extra={"model": name, "before": before, "traffic": dict(plan.traffic)}
                )
        for version in {r.version for r in retired} | set(plan.versions):
            service.metrics.traffic_weight.labels(name, version).set(plan.traffic.get(version, 0.0))
        logger.info(
            "model loaded",
            extra={"model": name, "versions": list(plan.versions), "loaded": [r.version for r in fresh],
                   "retired": [r.version for r in retired], "traffic": dict(plan.traffic),
                   "shadow": dict(plan.shadow), "policy": plan.policy},
        )  # fmt: skip
        service.shadows.restart(name)
        await asyncio.gather(*(self.retire(r) for r in retired))

    async def unload(self, name: str) -> None:
        """Take every version of ``name`` out of routing, let them answer what they accepted,
        and release them. Requests for it then get 503 ``model_not_ready`` until it is loaded."""
        model = self._service.served(name)
        async with self._locks.setdefault(name, asyncio.Lock()):
            retired = list(model.versions.values())
            model.unloaded, model.versions = True, {}
            for runtime in retired:
                self._service.metrics.traffic_weight.labels(name, runtime.version).set(0)
            logger.info("model unloaded", extra={"model": name, "versions": [r.version for r in retired]})
            self._service.shadows.restart(name)
            await asyncio.gather(*(self.retire(r) for r in retired))
        self._service.metrics.repository_operations.labels(name, "unload", "ok").inc()

    async def retire(self, runtime: ModelRuntime) -> None:
        """Release a version taken out of routing once the requests it accepted are answered
        (up to the repository's drain timeout; what is still queued then gets 503)."""
        service = self._service
        runtime.retiring = True
        service.retiring.add(runtime)
        timeout = self.repository.drain_timeout_s if self.repository else 30.0
        deadline = time.monotonic() + timeout
        try:
            if runtime.active:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(runtime.quiet.wait(), timeout)
            remaining = max(0.0, deadline - time.monotonic())
            await asyncio.gather(*(b.drain(remaining) for b in runtime.batchers.values()))
            if runtime.state is ModelState.READY:
                runtime.state = ModelState.STOPPED
            if not self._serving(runtime):  # its replacement (same version, new files) reports itself
                service.metrics.model_ready.labels(*runtime.labels).set(0)
            await runtime.release()
        finally:
            service.retiring.discard(runtime)
            self._fingerprints.pop(id(runtime), None)
        logger.info("model version retired", extra={"model": runtime.name, "version": runtime.version})

    def _serving(self, runtime: ModelRuntime) -> bool:
        """Another instance of ``runtime``'s model and version serves (it was reloaded)."""
        model = self._service.models.get(runtime.name)
        other = model.versions.get(runtime.version) if model is not None else None
        return other is not None and other is not runtime

    # -- polling (Triton's poll mode) ---------------------------------------------------------

    def remember_loaded(self) -> None:
        """Note the files of every version loaded at start, so a later load sees what changed."""
        if self.repository is None:
            return
        for model in self._service.models.values():
            for runtime in model.versions.values():
                if runtime.spec is not None and model.directory is not None:
                    self._fingerprints[id(runtime)] = _version_fingerprint(runtime.spec, model.directory)

    def start_polling(self, interval_s: float) -> None:
        """Re-read the repository every ``interval_s`` and load every served model whose folder changed."""
        if self.repository is not None and interval_s > 0:
            self._poll_task = asyncio.create_task(self._poll(interval_s), name="repository-poll")

    async def _poll(self, interval_s: float) -> None:
        assert self.repository is not None
        seen: dict[str, Fingerprint] = {}
        while True:
            for name, model in list(self._service.models.items()):
                if model.unloaded or model.directory is None:
                    continue
                now = await asyncio.to_thread(fingerprint, model.directory)
                if seen.get(name, now) != now:
                    with contextlib.suppress(LoadFailed, ModelNotFound):
                        await self.load(name)
                seen[name] = now
            await asyncio.sleep(interval_s)

    async def stop(self) -> None:
        if self._poll_task is not None:
            self._poll_task.cancel()
            await asyncio.gather(self._poll_task, return_exceptions=True)

    def _folder(self, name: str) -> Path:
        if self.repository is None:
            raise LoadFailed("model control needs a model repository folder")
        directory = self.repository.path / name
        if "/" in name or name.startswith(".") or not (directory / MODEL_FILE).is_file():
            raise ModelNotFound(
                f"no model folder {name[:64]!r} with a {MODEL_FILE} in {self.repository.path}"
            )
        return directory


def check_control_request(server: ServerSettings, parameters: Iterable[str] = ()) -> None:
    """Refuse a model control request (either transport) that this server will not carry out:
    control is off (``server.model_control``), the server runs several worker processes (a load
    would change the one that took the request), or the request brings a configuration or files
    of its own (Triton's ``config`` and ``file:`` parameters): models change by editing their folder."""
    if not server.model_control:
        raise Forbidden("model control is off on this server (server.model_control: false)")
    if server.workers > 1:
        raise Forbidden(
            f"model control is refused with server.workers {server.workers}: a load or unload would change "
            "one worker process; edit the model folder (with server.repository_poll_s) or restart"
        )
    if any(name == "config" or name.startswith("file:") for name in parameters):
        raise BadRequest(
            "loading a model from a configuration in the request is not supported; edit its folder"
        )


def _unchanged(old: ModelRuntime, spec: ModelSpec) -> bool:
    """The version serving now was loaded from this configuration and is (or will be) serving."""
    if old.spec is None or old.state in (ModelState.FAILED, ModelState.STOPPED):
        return False
    return old.spec.config == spec.config and old.spec.directory == spec.directory


def _entry(runtime: ModelRuntime, state: str | None = None) -> IndexEntry:
    if state == "UNLOADING":
        return IndexEntry(runtime.name, runtime.version, "UNLOADING", "draining")
    if runtime.ready:
        return IndexEntry(runtime.name, runtime.version, "READY", "")
    if runtime.state in (ModelState.PENDING, ModelState.LOADING, ModelState.RECOVERING):
        return IndexEntry(runtime.name, runtime.version, "LOADING", runtime.not_ready_reason())
    return IndexEntry(runtime.name, runtime.version, "UNAVAILABLE", runtime.not_ready_reason())


def _described(version: str | None, error: str) -> str:
    return error if version is None else f"version {version}: {error}"
