"""inference-engine: an image-model inference server with dynamic batching."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("inference-engine")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
