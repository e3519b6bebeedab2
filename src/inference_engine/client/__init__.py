"""The Python client under the server's package name: ``inference_engine.client`` is
``inference_engine_client`` (the ``inference-engine-client`` distribution, a dependency of the
server), kept so that code written against this path goes on working. New code imports
``inference_engine_client``, which installs without the server. ``inference_engine.client.command``
is the server CLI's ``predict`` subcommand, built on the client.
"""

from inference_engine_client import *  # noqa: F403
from inference_engine_client import __all__ as __all__
