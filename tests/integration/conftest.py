"""One real server process per module group, on a free loopback port, over a built repository."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ServerProcess
from tests.repository import add_colour_model, add_default_model, add_model, add_tiny_cnn


@pytest.fixture(scope="session")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default model, a flaky custom model, a batch-poisoning one, and one that fails to load."""
    repo = tmp_path_factory.mktemp("repository")
    add_default_model(repo)
    add_tiny_cnn(repo)
    add_colour_model(repo, "flaky", fail_on_red=True, fail_batch_on_blue=True)
    add_model(repo, "broken", {"handler": "torchscript", "weights": "missing.pt"})
    add_model(repo, "misconfigured", {"handler": "no_such_handler"})
    return repo


@pytest.fixture(scope="session")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("logs") / "server.log"
    process = ServerProcess(repository, args=[], env={"IE_SERVER__DEFAULT_MODEL": "efficientnet_lite0"})
    process.start(log)
    yield process
    process.stop()
