"""The client's own version, read from its installed distribution (kept equal to the server's)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("inference-engine-client")
except PackageNotFoundError:  # pragma: no cover - imported from a source tree without install
    __version__ = "0.0.0+unknown"
