"""Allow ``python -m inference_engine``."""

from inference_engine.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
