"""The HTTP transport: FastAPI app, middleware, routes, and the one error mapping."""

from inference_engine.api.app import create_app

__all__ = ["create_app"]
