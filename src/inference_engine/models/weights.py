"""Where a Hugging Face-format model's weights come from: a folder, else the hub (or its cache).

``model.yaml`` names both, so a model folder can ship its weights or fetch them::

    weights: weights                              # a folder beside model.yaml (the default)
    options:
      hub_id: openai/clip-vit-base-patch32        # fallback: the hub, or the local HF cache

The rules, in order:

1. ``weights`` (default ``weights``) is a folder, relative to the model folder or absolute.
   If it exists, it is used, and the hub is never contacted.
2. Otherwise the hub id is ``options.hub_id``, or ``weights`` itself when it reads as
   ``org/name`` (optionally ``@revision``). The snapshot comes from the hub into the standard
   Hugging Face cache, or from that cache alone when ``HF_HUB_OFFLINE`` is set.
3. When neither works, :class:`~inference_engine.errors.ModelLoadError` says what to run on a
   machine with internet (``inference-engine pull ... --to <the folder of rule 1>``), so a
   user with an air-gapped server copies one folder and is done.

Why the cache and not the model folder for hub downloads: the model folder is often a read-only
mount in a container, and the cache is shared with every other Hugging Face tool on the machine.

All network access goes through :func:`download_snapshot`, so tests (and ``pull``'s tests)
replace that one function.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from inference_engine.errors import ModelLoadError
from inference_engine.models.base import ModelConfig

DEFAULT_FOLDER = "weights"

# Only what a model needs: config, tokenizer and processor files, and one copy of the weights.
CONFIG_FILES = [
    "config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
]
SAFETENSORS_FILES = ["*.safetensors", "*.safetensors.index.json"]
PYTORCH_FILES = ["pytorch_model.bin", "pytorch_model-*.bin", "pytorch_model.bin.index.json"]

_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.\-]*/[A-Za-z0-9][\w.\-]*)(?:@(?P<revision>[\w.\-/]+))?$")
_TRUE = {"1", "true", "yes", "on"}


class HubUnreachable(Exception):
    """The hub (or, offline, the local cache) could not provide the snapshot."""


@dataclass(frozen=True)
class HubRef:
    """A hub repository and an optional revision (branch, tag or commit)."""

    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return self.repo_id + (f"@{self.revision}" if self.revision else "")

    def pull_command(self, target: Path | None) -> str:
        """The ``inference-engine pull`` line that fetches this snapshot into ``target``."""
        command = f"inference-engine pull {self.repo_id}"
        if self.revision:
            command += f" --revision {self.revision}"
        return command + (f" --to {target}" if target is not None else "")


def parse_hub_id(value: str) -> HubRef | None:
    """``org/name`` or ``org/name@revision`` as a :class:`HubRef`; ``None`` for anything else."""
    match = _HUB_ID.match(value.strip())
    if match is None or ".." in value:
        return None
    return HubRef(match["repo"], match["revision"])


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set, read now, not at import."""
    from huggingface_hub import constants

    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    return any(os.environ.get(n, "").strip().lower() in _TRUE for n in names) or constants.is_offline_mode()


def download_snapshot(hub: HubRef, *, local_dir: Path | None = None, offline: bool = False) -> Path:
    """Fetch the files a model needs from the hub (or the cache when ``offline``); the only network call.

    Safetensors are preferred: ``*.bin`` weights are fetched only when the repository has no
    safetensors (``facebook/flava-full`` is one). With ``local_dir`` the files land there,
    otherwise in the Hugging Face cache. Raises :class:`HubUnreachable` when the hub cannot be
    reached and the cache lacks the snapshot; other hub errors as a ``ModelLoadError``.
    """
    from huggingface_hub import errors, snapshot_download

    def fetch(patterns: list[str]) -> Path:
        return Path(
            snapshot_download(
                hub.repo_id,
                revision=hub.revision,
                local_dir=local_dir,
                allow_patterns=CONFIG_FILES + patterns,
                local_files_only=offline,
            )
        )

    try:
        folder = fetch(SAFETENSORS_FILES)
        if not any(folder.glob("*.safetensors")):
            folder = fetch(PYTORCH_FILES)
    except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled) as exc:
        raise HubUnreachable(str(exc)) from None
    except errors.RepositoryNotFoundError:
        raise ModelLoadError(f"the hub has no repository {hub.repo_id} (or it is gated/private)") from None
    except errors.RevisionNotFoundError:
        raise ModelLoadError(f"the hub repository {hub.repo_id} has no revision {hub.revision}") from None
    except (errors.HfHubHTTPError, OSError) as exc:
        raise ModelLoadError(f"downloading {hub} failed: {type(exc).__name__}: {exc}") from None
    return folder


def configured_hub(config: ModelConfig) -> HubRef | None:
    """The hub id of ``options.hub_id``, else of ``weights`` when it reads as one."""
    option = config.options.get("hub_id")
    if option is not None:
        hub = parse_hub_id(option) if isinstance(option, str) else None
        if hub is None:
            raise ModelLoadError(
                f"model {config.name!r}: options.hub_id must read 'org/name' or 'org/name@revision' "
                f"(got {option!r})"
            )
        return hub
    return parse_hub_id(config.weights) if config.weights else None


def local_folder(config: ModelConfig, model_dir: Path) -> Path:
    """The folder rule 1 looks at: ``weights`` (default ``weights``), relative to ``model_dir``."""
    path = Path(config.weights or DEFAULT_FOLDER)
    return path if path.is_absolute() else model_dir / path


def resolve_weights(config: ModelConfig, model_dir: Path) -> Path:
    """The folder to ``from_pretrained``: the configured folder, else the hub snapshot (see above)."""
    folder = local_folder(config, model_dir)
    if folder.is_dir():
        return folder
    if folder.exists():
        raise ModelLoadError(
            f"weights for model {config.name!r}: {folder} is a file; Hugging Face models load from "
            "a folder (config.json plus weights)"
        )
    hub = configured_hub(config)
    if hub is None:
        raise ModelLoadError(
            f"weights for model {config.name!r} not found: {folder} is missing and no hub id is "
            f"configured; set options.hub_id, or fetch a snapshot with: inference-engine pull "
            f"ORG/NAME --to {folder}"
        )
    offline = hub_offline()
    try:
        return download_snapshot(hub, offline=offline)
    except HubUnreachable:
        why = " (HF_HUB_OFFLINE is set)" if offline else ""
        raise ModelLoadError(
            f"weights for model {config.name!r} not found: {folder} is missing and the hub ({hub}) "
            f"cannot be reached{why}; on a machine with internet run: {hub.pull_command(folder)}"
        ) from None


def weights_absent(config: ModelConfig, model_dir: Path) -> str | None:
    """Why the weights are not on this machine (no folder, hub snapshot not cached), or ``None``.

    Looks only at the disk, never the network: it decides the default served set at start-up.
    """
    folder = local_folder(config, model_dir)
    if folder.exists():
        return None
    try:
        hub = configured_hub(config)
    except ModelLoadError as exc:
        return str(exc)
    if hub is None:
        return f"{folder} is missing and no hub id is configured"
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(hub.repo_id, "config.json", revision=hub.revision), str):
        return None
    return (
        f"{folder} is missing and {hub} is not in the local Hugging Face cache; run "
        f"{hub.pull_command(folder)}, or serve it by name (--model {config.name}) to download it"
    )


def pull(hub: HubRef, target: Path | None) -> Path:
    """``inference-engine pull``: the snapshot into ``target`` (or the cache); raises on failure."""
    offline = hub_offline()
    try:
        return download_snapshot(hub, local_dir=target, offline=offline)
    except HubUnreachable:
        why = "HF_HUB_OFFLINE is set" if offline else "no connection"
        raise ModelLoadError(
            f"cannot pull {hub}: the hub cannot be reached ({why}) and the local Hugging Face cache "
            "does not hold it; run this on a machine with internet and copy the folder here"
        ) from None


# -- ``inference-engine pull`` (wired in by cli.py) -------------------------------------------


def add_pull_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``pull`` sub-command's arguments."""
    parser.add_argument("hub_id", metavar="HUB_ID", help="a hub repository: org/name or org/name@revision")
    parser.add_argument(
        "--to",
        type=Path,
        metavar="DIR",
        help="folder to write (e.g. models/clip/weights); default: the Hugging Face cache",
    )
    parser.add_argument("--revision", help="branch, tag or commit (default: main)")


def run_pull(args: argparse.Namespace) -> int:
    """Download the snapshot; 0 on success, 1 when it cannot be had, 2 for a malformed id."""
    hub = parse_hub_id(args.hub_id)
    if hub is None:
        print(f"inference-engine: {args.hub_id!r} is not a hub id (org/name[@revision])", file=sys.stderr)
        return 2
    if args.revision:
        hub = HubRef(hub.repo_id, args.revision)
    try:
        folder = pull(hub, args.to)
    except ModelLoadError as exc:
        print(f"inference-engine: {exc}", file=sys.stderr)
        return 1
    files = [p for p in folder.rglob("*") if p.is_file() and ".cache" not in p.relative_to(folder).parts]
    size_mb = sum(p.stat().st_size for p in files) / 1e6
    print(f"pulled {hub} to {folder} ({len(files)} files, {size_mb:.1f} MB)")
    if args.to is not None:
        print(f"to serve it: 'weights: {args.to.name}' in {args.to.parent / 'model.yaml'}", file=sys.stderr)
    return 0
