"""The fixed prose of ``docs/CONFIGURATION.md``; ``configdocs`` renders the tables around it.

Kept apart from the renderer so that editing the words never touches the code that walks the
settings models, and the renderer stays short.
"""

from __future__ import annotations

#: What a key's docstring does not say: consequences elsewhere in the code, and where to read more.
KEY_NOTES: dict[str, str] = {
    "env": "Set only by `--env` or `IE_ENV`; an `env:` key in a YAML file is refused.",
    "model_repository": "A relative path is resolved from the working directory.",
    "models": "A name with no folder in the repository stops start-up (exit code 2).",
    "torch_threads": "Applied by `serve` (`torch.set_num_threads`).",
    "server.request_timeout_s": (
        "A client may ask for another deadline with `X-Request-Timeout-Ms`. "
        "See [OPERATIONS.md](OPERATIONS.md#deadlines)."
    ),
    "server.max_request_timeout_s": "May exceed `server.request_timeout_s`.",
    "server.preprocess_workers": "The pool is shared by every model.",
    "server.drain_timeout_s": (
        "Counted from the signal; see [OPERATIONS.md](OPERATIONS.md#graceful-shutdown)."
    ),
    "server.shutdown_delay_s": (
        "Above `server.drain_timeout_s`, start-up stops with exit code 2. `configs/prod.yaml` sets 5; "
        "see [OPERATIONS.md](OPERATIONS.md#graceful-shutdown)."
    ),
    "server.default_model": "Must name a served model, else start-up stops with exit code 2.",
    "server.header_timeout_s": (
        "The 408 never reaches the app: it is logged (`inference_engine.protocol`), not counted in "
        "the request metrics. See [OPERATIONS.md](OPERATIONS.md#network-faults)."
    ),
    "server.keep_alive_timeout_s": (
        "uvicorn's `timeout_keep_alive`. Behind a proxy or load balancer that reuses connections, "
        "set it above the proxy's own idle timeout, or the proxy may send a request on a connection "
        "the server is closing (a 502 at the proxy)."
    ),
    "server.send_timeout_s": (
        "The clock runs from when the server's own buffer for the connection fills (64 KiB beyond "
        "what the kernel holds) until it has drained: a client must take 64 KiB per "
        "`send_timeout_s` (about 1 KiB/s at the default), however slowly it reads. "
        "See [OPERATIONS.md](OPERATIONS.md#network-faults)."
    ),
    "server.max_connections": (
        "uvicorn's `limit_concurrency` (set to one more, as it counts the new connection). The 503 "
        "comes from the HTTP layer, as plain text, for every path, probes included, and is not "
        "counted in the request metrics. See [OPERATIONS.md](OPERATIONS.md#network-faults)."
    ),
    "images.min_width": "Must not exceed `images.max_width`.",
    "images.min_height": "Must not exceed `images.max_height`.",
    "auth.enabled": "`serve` refuses to start (exit code 2) when it is true and no digest is configured.",
    "rate_limit.overrides": (
        "A bucket's client is the key's digest, or the client address when auth is off; "
        "an override applies to the client it is keyed by."
    ),
}

#: A paragraph under a section's heading, after the section's own description.
SECTION_NOTES: dict[str, str] = {
    "server": (
        "Request handling and shutdown are described in [OPERATIONS.md](OPERATIONS.md); the "
        "headers clients send are in [API.md](API.md#request-headers)."
    ),
    "batching": (
        "A key set in `model.yaml` wins for that model "
        "([model-repository.md](model-repository.md#how-batching-settings-are-resolved)). "
        "The shipped `models/efficientnet_lite0/model.yaml` sets all three, so "
        "`IE_BATCHING__MAX_BATCH_SIZE=32` changes `config show` but not that model: "
        "`inference-engine models list` shows the values each model uses. How to choose them: "
        "[OPERATIONS.md](OPERATIONS.md#tuning-batching)."
    ),
    "images": (
        "Dimensions are checked from the image header, before the pixels are decoded; the error "
        "types are in [API.md](API.md#errors)."
    ),
    "logging": "The log records and their fields: [OPERATIONS.md](OPERATIONS.md#logs).",
    "auth": (
        "`configs/prod.yaml` turns keys on. `inference-engine auth new-key` makes a key and its "
        "digest; see [security.md](security.md#api-keys)."
    ),
    "rate_limit": (
        "With `backend: memory` buckets live in each process, so N replicas allow up to N times "
        "the rate; `backend: redis` shares one bucket per client across replicas. Fail modes and "
        "metrics: [security.md](security.md#several-replicas-backend-redis)."
    ),
    "rate_limit.overrides.<client>": (
        "One entry per client, e.g. "
        '`IE_RATE_LIMIT__OVERRIDES=\'{"<sha256>": {"rate": 100, "burst": 200}}\'`. Mapping keys '
        "given inside variable names (`IE_RATE_LIMIT__OVERRIDES__<CLIENT>__RATE`) are lower-cased, "
        "which suits hex digests; use the JSON form for anything else."
    ),
    "urls": "What is checked before a URL is fetched: [security.md](security.md#image-urls).",
    "watchdog": (
        "What a restart does: [security.md](security.md#watchdog); what to do about one: "
        "[OPERATIONS.md](OPERATIONS.md#runbook-watchdog-restarts)."
    ),
}


INTRO = """
# Configuration

<!-- Generated from src/inference_engine/settings.py (the field docstrings) and
     src/inference_engine/configdocs.py (this text). Do not edit by hand: change those, then
     run `inference-engine config docs > docs/CONFIGURATION.md`.
     tests/unit/test_configdocs.py fails while the two differ. -->

All server settings live in one typed model, `Settings` in
[`src/inference_engine/settings.py`](../src/inference_engine/settings.py); the
[settings reference](#settings-reference) at the end of this page is generated from it, one table
per section. Per-model settings (handler, weights, batching and admission overrides, the output
cache and merging of duplicates (`cache`), pre-processing) live in each model's `model.yaml` and
are described in [model-repository.md](model-repository.md#modelyaml).

## Layers and precedence

Settings are built from up to six layers, lowest precedence first:

| # | Layer | Where it comes from | Source shown by `config show` |
|---|-------|---------------------|-------------------------------|
| 1 | Field defaults | the code (`settings.py`) | `default` |
| 2 | `configs/base.yaml` | `<config-dir>/base.yaml` | `configs/base.yaml` |
| 3 | `configs/<env>.yaml` | `<config-dir>/<env>.yaml` (`--env`, `IE_ENV` or `dev`) | `configs/prod.yaml` |
| 4 | `--config FILE` | one extra YAML file | the file's path |
| 5 | `IE_*` environment variables | the process environment | `environment variable IE_SERVER__PORT` |
| 6 | Command-line flags | the flags of `serve` ([below](#command-line-flags)) | `command line` |

Layers merge key by key: a nested key overrides only itself (setting `server.port` in
`prod.yaml` keeps `server.host` from `base.yaml`), and the entries of a mapping
(`rate_limit.overrides`) merge the same way. A list (`models`, `auth.api_key_hashes`,
`urls.allowed_hosts`) is replaced as a whole.

Details that follow from the loader:

- `--config-dir` defaults to `configs`, relative to the working directory. A missing `base.yaml`
  or `<env>.yaml` (or a missing config dir) is skipped silently; a missing `--config FILE` is an
  error (`--config /tmp/nope.yaml: no such file`).
- An empty YAML file is an empty layer. A YAML file whose top level is not a mapping is an error.
- `model_repository` and `--config-dir` are relative to the working directory, so run the
  server from the repository root or pass absolute paths.
- `env` is chosen only by `--env` or `IE_ENV` (default `dev`). An `env:` key in any YAML layer
  is refused: `/tmp/envfile.yaml: 'env' picks which file is read, so it cannot be set in one;
  use --env or IE_ENV`.
- Unknown keys are rejected in every section and at the top level.

### The shipped environment files

`configs/base.yaml` repeats the defaults of the `server`, `batching`, `images` and `logging`
sections. On top of it, `configs/dev.yaml` writes `text` logs for people; `configs/prod.yaml`
binds every interface (for containers), shortens the request deadline, requires API keys (the
digests come from `IE_AUTH__API_KEY_HASHES`), turns rate limits on and writes `json` logs;
`configs/test.yaml` sets small limits the tests can reach and `json` logs. Each file says why in
its comments, and `inference-engine config show --env prod` prints the merged result.

## Environment variables

- Prefix `IE_`, nested keys joined with `__`: `server.port` is `IE_SERVER__PORT`,
  `batching.max_batch_size` is `IE_BATCHING__MAX_BATCH_SIZE`. Names are case-insensitive. The
  [reference](#settings-reference) names the variable of every key.
- Scalars are given as plain strings and converted by validation (`IE_SERVER__PORT=9000`,
  `IE_AUTH__ENABLED=false`).
- Lists and mappings must be JSON: `IE_MODELS='["efficientnet_lite0"]'`. A non-JSON value fails:
  `IE_MODELS=efficientnet_lite0` gives `IE_MODELS = 'efficientnet_lite0': not valid JSON for a
  structured setting (from environment variable IE_MODELS)`.
- A whole section may be given as JSON (`IE_SERVER='{"port": 9002}'`); it merges key by key like
  any other layer.
- An unknown key inside a section is an error (`IE_SERVER__PROT=9000` gives
  `server.prot: unknown key (from environment variable IE_SERVER__PROT)`). A variable that does
  not start with a known top-level key (`IE_BOGUS=1`) is ignored.

```sh
IE_BATCHING__MAX_BATCH_SIZE=32 inference-engine serve
IE_MODELS='["efficientnet_lite0"]' IE_ENV=prod inference-engine serve --host 127.0.0.1
IE_LOGGING__FORMAT=json IE_SERVER__REQUEST_TIMEOUT_S=5 inference-engine serve
```

## Command-line flags

`inference-engine serve` sets these keys from flags (layer 6):
"""

AFTER_FLAGS = """
Every command that reads the configuration (`serve`, `config show`, `models list`) also takes
`--env {dev,prod,test}` (sets `env`, and with it which `configs/<env>.yaml` is read),
`--config FILE` (adds layer 4) and `--config-dir DIR` (where `base.yaml` and `<env>.yaml` are
read from; default `configs`). `config show` takes `--format {text,json}`; `models list` takes
`--model-repository DIR`. No flag exists for the other keys: use YAML or `IE_*` for those.
`config docs` prints this page and reads no configuration.

`make serve` runs `inference-engine serve --host $(HOST) --port $(PORT) --env $(ENV)
--model-repository $(MODEL_REPOSITORY)` (defaults `127.0.0.1`, `8000`, `dev`, `models`), so
under `make serve` those four are always command-line values and `IE_*` variables for them have
no effect.

## Invalid values

Every value is validated when the layers are merged. An invalid value stops every command
(`serve`, `config show`, `models list`) before anything starts. The message names the key, the
value and the layer it came from, and the exit code is **2**:

```console
$ IE_SERVER__PORT=abc inference-engine config show
inference-engine: invalid configuration:
  server.port = 'abc': Input should be a valid integer, unable to parse string as an integer (from environment variable IE_SERVER__PORT)
$ echo $?
2
```

All problems are listed at once:

```console
$ cat /tmp/bad.yaml
server:
  prot: 9000
batching:
  max_batch_size: 0
$ inference-engine config show --config /tmp/bad.yaml
inference-engine: invalid configuration:
  server.prot: unknown key (from /tmp/bad.yaml)
  batching.max_batch_size = 0: Input should be greater than or equal to 1 (from /tmp/bad.yaml)
```

More examples of the messages:

```text
logging.format = 'xml': Input should be 'json' or 'text' (from environment variable IE_LOGGING__FORMAT)
env = 'staging': Input should be 'dev', 'prod' or 'test' (from environment variable IE_ENV)
models = 'efficientnet_lite0': Input should be a valid list (from /tmp/models.yaml)
```

`serve` also refuses, with exit code 2, settings that are valid one by one but cannot work
together: `auth.enabled` with no `auth.api_key_hashes` (no request could be served),
`tracing.enabled` without the OpenTelemetry SDK installed, a `server.default_model` that is not
a served model, and a name in `models` with no folder in the repository:

```console
$ inference-engine serve --model nope
inference-engine: model(s) nope not found in models (available: efficientnet_lite0)
```

A broken model folder is not a configuration error. `serve` starts and reports the model as
failed (see [OPERATIONS.md](OPERATIONS.md#readiness-and-liveness)); `models list` marks it
`INVALID` and exits 1.

## `inference-engine config show`

Prints every key after merging, with its value and the layer it came from. It loads no model
and binds no port. `--format json` prints `{"<key>": {"value": ..., "source": ...}}`.

```console
$ IE_BATCHING__MAX_BATCH_SIZE=32 inference-engine config show --env prod
env                           "prod"                    # command line
model_repository              "models"                  # configs/base.yaml
models                        []                        # default
...
server.host                   "0.0.0.0"                 # configs/prod.yaml
server.port                   8000                      # configs/base.yaml
...
batching.max_batch_size       32                        # environment variable IE_BATCHING__MAX_BATCH_SIZE
...
auth.enabled                  true                      # configs/prod.yaml
...
```
"""  # noqa: E501 (real command output, quoted verbatim)

REFERENCE = """
## Settings reference

One table per section, in the order of `settings.py`. **Default** is the code's; **Environment
variable** is the key's name in layer 5 ("JSON" marks lists and mappings, which must be given
as JSON). The command-line flags are [above](#command-line-flags).
"""
