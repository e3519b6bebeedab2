"""Command line: ``serve``, ``config show``, ``config docs``, ``models list``, ``export``, ``pull``,
``predict``, ``auth``.

Exit codes: 0 success, 1 runtime failure, 2 bad configuration or usage (argparse's convention).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import sys
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inference_engine import __version__
from inference_engine.errors import ConfigError, ModelLoadError
from inference_engine.settings import LoadedSettings, Settings, load_settings

if TYPE_CHECKING:  # imported when used: the loader pulls in torch
    from inference_engine.models.loader import ModelSpec

logger = logging.getLogger("inference_engine.cli")

EXIT_CONFIG = 2


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--env", choices=["dev", "prod", "test"], help="environment layer (default: IE_ENV or dev)"
    )
    parser.add_argument("--config", type=Path, help="an extra YAML layer above configs/<env>.yaml")
    parser.add_argument("--config-dir", type=Path, default=Path("configs"), help="folder of base/<env> YAML")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inference-engine", description=__doc__)
    parser.add_argument("--version", action="version", version=f"inference-engine {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the model repository over HTTP")
    _add_config_args(serve)
    serve.add_argument("--model-repository", type=Path, help="folder of model folders")
    serve.add_argument(
        "--model",
        action="append",
        dest="models",
        metavar="NAME",
        help="serve only NAME (repeatable)",
    )
    serve.add_argument("--host", help="address to bind")
    serve.add_argument("--port", type=int, help="port to listen on")
    serve.add_argument("--workers", type=int, help="server processes on the port (server.workers)")
    serve.add_argument("--grpc-port", type=int, help="port of the gRPC listener (Open Inference Protocol V2)")
    serve.add_argument("--no-grpc", action="store_true", help="serve HTTP only, no gRPC listener")
    serve.add_argument("--log-format", choices=["json", "text"], help="log format")
    serve.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="log level")

    config = commands.add_parser("config", help="inspect the configuration")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    show = config_commands.add_parser("show", help="the merged configuration and where each value came from")
    _add_config_args(show)
    show.add_argument("--format", choices=["text", "json"], default="text")
    config_commands.add_parser(
        "docs", help="print docs/CONFIGURATION.md, generated from the settings (reads no configuration)"
    )

    models = commands.add_parser("models", help="inspect the model repository")
    models_commands = models.add_subparsers(dest="models_command", required=True)
    listing = models_commands.add_parser(
        "list", help="the models in the repository and whether they validate"
    )
    _add_config_args(listing)
    listing.add_argument("--model-repository", type=Path, help="folder of model folders")
    from inference_engine import export

    export.add_arguments(
        commands.add_parser("export", help="export a torch model folder to ONNX and verify it against torch")
    )
    from inference_engine.client.command import add_predict_command

    add_predict_command(commands)
    from inference_engine.models.weights import add_pull_arguments

    add_pull_arguments(
        commands.add_parser("pull", help="download a Hugging Face model snapshot (CLIP, FLAVA weights)")
    )
    auth = commands.add_parser("auth", help="API keys")
    auth_commands = auth.add_subparsers(dest="auth_command", required=True)
    auth_commands.add_parser("new-key", help="print a new random API key and the digest to configure")
    hash_key = auth_commands.add_parser("hash-key", help="print the SHA-256 digest to configure for KEY")
    hash_key.add_argument("key", help="the API key (read from standard input when '-')")
    return parser


def _auth(args: argparse.Namespace) -> int:
    from inference_engine.access import hash_key

    if args.auth_command == "new-key":
        key = secrets.token_urlsafe(32)
        print(f"key:    {key}\nsha256: {hash_key(key)}")
        print("Give the key to the client; put only the sha256 in auth.api_key_hashes.", file=sys.stderr)
        return 0
    key = sys.stdin.readline().strip() if args.key == "-" else args.key
    print(hash_key(key))
    return 0


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    if getattr(args, "model_repository", None) is not None:
        overrides["model_repository"] = str(args.model_repository)
    if getattr(args, "models", None):
        overrides["models"] = args.models
    server = {k: v for k in ("host", "port", "workers") if (v := getattr(args, k, None)) is not None}
    if server:
        overrides["server"] = server
    grpc: dict[str, Any] = {"enabled": False} if getattr(args, "no_grpc", False) else {}
    if getattr(args, "grpc_port", None) is not None:
        grpc["port"] = args.grpc_port
    if grpc:
        overrides["grpc"] = grpc
    log = {"format": getattr(args, "log_format", None), "level": getattr(args, "log_level", None)}
    if any(log.values()):
        overrides["logging"] = {k: v for k, v in log.items() if v is not None}
    return overrides


def _load(args: argparse.Namespace) -> LoadedSettings:
    return load_settings(
        config_dir=args.config_dir,
        env=args.env,
        config_file=args.config,
        overrides=_overrides(args),
    )


def _without_password(url: str) -> str:
    """``redis://:***@host:6379/0`` for a URL with a password: ``config show`` output gets pasted."""
    parts = urllib.parse.urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _config_show(loaded: LoadedSettings, fmt: str) -> int:
    rows = [
        (key, _without_password(value) if key.endswith("_url") and isinstance(value, str) else value, source)
        for key, value, source in loaded.items()
    ]
    if fmt == "json":
        print(json.dumps({key: {"value": value, "source": source} for key, value, source in rows}, indent=2))
        return 0
    width = max(len(key) for key, _, _ in rows)
    for key, value, source in rows:
        print(f"{key:<{width}}  {json.dumps(value):<24}  # {source}")
    return 0


def _config_docs() -> int:
    from inference_engine.configdocs import render_configuration_doc

    sys.stdout.write(render_configuration_doc())
    return 0


def _models_list(settings: Settings) -> int:
    from inference_engine.models.loader import scan_repository

    specs, broken = scan_repository(settings.model_repository, settings.batching, settings.models or None)

    def status(spec: ModelSpec) -> str:
        absent = spec.handler_class.weights_missing(spec.config, spec.directory)
        return "ok" if absent is None else "weights absent: " + absent

    rows = [
        (s.name, s.config.version, s.config.handler, s.config.device,
         f"batch<={s.config.max_batch_size} delay={s.config.max_batch_delay_ms}ms"
         + ("(adaptive)" if s.config.batch_delay == "adaptive" else ""),
         s.plan.policy.replace(" ", ""), _share(s), status(s))
        for s in specs
    ] + [
        (b.name, b.version or "-", "-", "-", "-", b.plan.policy.replace(" ", "") if b.plan else "-", "-",
         "INVALID: " + " ".join(b.error.split()))
        for b in broken
    ]  # fmt: skip
    if not rows:
        print(f"no models in {settings.model_repository}")
        return 1
    print(f"{'NAME':<24} {'VERSION':<8} {'HANDLER':<20} {'DEVICE':<7} {'BATCHING':<32} {'POLICY':<12} "
          f"{'TRAFFIC':<18} STATUS")  # fmt: skip
    for row in sorted(rows, key=lambda r: (r[0], r[1].zfill(12))):
        widths = (24, 8, 20, 7, 32, 12, 18, 0)
        print(" ".join(f"{cell:<{width}}" for cell, width in zip(row, widths, strict=True)).rstrip())
    return 1 if broken else 0


def _share(spec: ModelSpec) -> str:
    """A version's share of the model's traffic, and of its shadow copies: ``70%``, ``0%+shadow:100%``."""
    share = f"{spec.plan.traffic.get(spec.version, 0.0) * 100:g}%"
    shadow = spec.plan.shadow.get(spec.version)
    return share if shadow is None else f"{share}+shadow:{shadow * 100:g}%"


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    if args.command == "auth":
        return _auth(args)
    if args.command == "export":
        from inference_engine import export

        return export.run(args)
    if args.command == "predict":  # a client of a running server: reads no server configuration
        from inference_engine.client.command import run_predict

        return run_predict(args)
    if args.command == "pull":  # fetches weights: reads no server configuration
        from inference_engine.models.weights import run_pull

        return run_pull(args)
    if args.command == "config" and args.config_command == "docs":
        return _config_docs()
    try:
        loaded = _load(args)
    except ConfigError as exc:
        print(f"inference-engine: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        return _run(args, loaded)
    except BrokenPipeError:  # `inference-engine config show | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _run(args: argparse.Namespace, loaded: LoadedSettings) -> int:
    try:
        if args.command == "config":
            return _config_show(loaded, args.format)
        if args.command == "models":
            return _models_list(loaded.settings)
        from inference_engine.server import serve

        return serve(loaded.settings)
    except (ModelLoadError, ConfigError) as exc:
        print(f"inference-engine: {exc}", file=sys.stderr)
        return EXIT_CONFIG
