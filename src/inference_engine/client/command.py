"""``inference-engine predict``: classify local images against a running server.

Kept apart from ``cli.py`` (which only registers it) and importing the client lazily, so that
``inference-engine serve`` does not pay for it. Images are sent from a thread pool sharing one
:class:`InferenceClient`, so its connection pool, retries and circuit breaker apply to the whole
run: against a server that is down, the run fails fast after a few images instead of waiting
out a timeout for each one. Results are printed in input order, as soon as each is known.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from inference_engine_client import InferenceClient, InferenceError, Prediction

#: What a folder walk picks up; a file named on the command line is sent whatever its name.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
DEFAULT_URL = "http://127.0.0.1:8000"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def add_predict_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``predict`` on the CLI's subcommands."""
    predict = commands.add_parser(
        "predict",
        help="classify images (files or folders) with a running server",
        description="Send each image to a running server and print its predictions. "
        "Exit code 0 when every image succeeded, 1 when any failed.",
    )
    predict.add_argument("paths", nargs="+", type=Path, metavar="IMAGE_OR_FOLDER")
    predict.add_argument("--url", help=f"the server (default: IE_URL or {DEFAULT_URL})")
    predict.add_argument("--model", help="the model (default: the server's default model)")
    predict.add_argument("--model-version", help="this version of --model (default: by its traffic weights)")
    predict.add_argument("--routing-key", help="requests with the same key go to the same version (sticky)")
    predict.add_argument("--top-k", type=_positive_int, help="predictions per image (default: the model's)")
    predict.add_argument("--labels", help="comma-separated labels for a zero-shot model (CLIP)")
    predict.add_argument("--json", action="store_true", help="one JSON object per image on stdout")
    predict.add_argument("--concurrency", type=_positive_int, default=4, help="requests in flight (4)")
    predict.add_argument("--api-key", help="the API key (default: IE_API_KEY)")
    predict.add_argument("--timeout", type=float, default=60.0, help="seconds per image, retries included")
    predict.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def find_images(paths: Sequence[Path]) -> tuple[list[Path], list[Path]]:
    """``(images, missing)``: named files as given, folders walked (sorted) for image suffixes."""
    images: list[Path] = []
    missing: list[Path] = []
    for path in paths:
        if path.is_dir():
            images.extend(
                sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            )
        elif path.is_file():
            images.append(path)
        else:
            missing.append(path)
    return images, missing


def _record(path: Path, outcome: Prediction | InferenceError) -> dict[str, Any]:
    from inference_engine_client import InferenceError

    if isinstance(outcome, InferenceError):
        return {"path": str(path), "ok": False, "error": outcome.to_dict()}
    return {
        "path": str(path),
        "ok": True,
        "model": outcome.model,
        "model_version": outcome.model_version,
        "request_id": outcome.request_id,
        "predictions": outcome.raw.get("predictions", []),
        "timings_ms": outcome.timings_ms,
    }


def _line(path: Path, outcome: Prediction) -> str:
    shown = ", ".join(f"{p.label} ({p.score:.3f})" for p in outcome.predictions)
    served = f" [{outcome.model} version {outcome.model_version}]" if outcome.model_version else ""
    return f"{path}: {shown or json.dumps(outcome.raw)}{served}"


def _predict_one(
    client: InferenceClient, path: Path, args: argparse.Namespace
) -> Prediction | InferenceError:
    from inference_engine_client import InferenceError

    labels = [label.strip() for label in args.labels.split(",") if label.strip()] if args.labels else None
    try:
        return client.predict(
            path, model=args.model, top_k=args.top_k, labels=labels,
            version=args.model_version, routing_key=args.routing_key,
        )  # fmt: skip
    except InferenceError as exc:
        return exc
    except OSError as exc:  # unreadable file: reported like any other failure
        return InferenceError(f"cannot read the file: {exc.strerror or exc}", code="unreadable_file")


def _in_order(futures: list[Future[Prediction | InferenceError]], progress: Any) -> Iterator[int]:
    """Indexes of ``futures`` in input order, each as soon as it and all before it are done."""
    done: set[int] = set()
    index = {id(f): i for i, f in enumerate(futures)}
    next_index = 0
    for future in as_completed(futures):
        progress.update(1)
        done.add(index[id(future)])
        while next_index in done:
            yield next_index
            next_index += 1


def run_predict(args: argparse.Namespace) -> int:
    """Run ``predict``; 0 when every image was classified, 1 otherwise."""
    from tqdm import tqdm

    from inference_engine_client import InferenceClient, InferenceError

    images, missing = find_images(args.paths)
    for path in missing:
        print(f"{path}: error: no such file or folder", file=sys.stderr)
    if not images:
        if not missing:
            print("inference-engine: no image files found", file=sys.stderr)
        return 1
    url = args.url or os.environ.get("IE_URL") or DEFAULT_URL
    api_key = args.api_key or os.environ.get("IE_API_KEY") or None
    failed = bool(missing)
    quiet = args.no_progress or len(images) < 2 or not sys.stderr.isatty()
    with (
        InferenceClient(url, api_key=api_key, timeout=args.timeout) as client,
        ThreadPoolExecutor(max_workers=args.concurrency, thread_name_prefix="predict") as pool,
        tqdm(total=len(images), unit="img", file=sys.stderr, disable=quiet) as progress,
    ):
        futures = [pool.submit(_predict_one, client, path, args) for path in images]
        try:
            for i in _in_order(futures, progress):
                path, outcome = images[i], futures[i].result()
                if isinstance(outcome, InferenceError):
                    failed = True
                    progress.write(f"{path}: error: {outcome}", file=sys.stderr)
                if args.json:
                    progress.write(json.dumps(_record(path, outcome)), file=sys.stdout)
                elif not isinstance(outcome, InferenceError):
                    progress.write(_line(path, outcome), file=sys.stdout)
        except KeyboardInterrupt:  # pragma: no cover - the pool would otherwise send every queued image
            for future in futures:
                future.cancel()
            print("inference-engine: interrupted", file=sys.stderr)
            return 130
    return 1 if failed else 0
