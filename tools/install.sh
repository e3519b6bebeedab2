#!/usr/bin/env bash
# Install the locked dependencies into a virtual environment (the Makefile's install targets):
#
#   tools/install.sh VENV slim|torch|dev
#
# slim:  the server's default install (requirements/slim.txt): ONNX Runtime, no torch.
# torch: + the [torch] extra (CLIP, FLAVA, TorchScript, EfficientNet on torch, export).
# dev:   the dev set (every extra, tests, linters): what `make test` and CI install.
#
# torch's build follows the machine: with an NVIDIA driver (/proc/driver/nvidia, or nvidia-smi
# lists a GPU) PyPI's CUDA build (requirements/*-cuda.txt); without one the CPU build
# (requirements/*-cpu.txt), whose wheel comes from download.pytorch.org/whl/cpu, named as an
# extra index only where that host resolves (elsewhere pip's own configuration must offer it,
# e.g. a find-links folder), so no CUDA wheel is ever downloaded there. TORCH_VARIANT=cpu|cuda
# overrides the detection; TORCH_CPU_INDEX names another CPU index (a mirror). DRY_RUN=1 prints
# the pip commands instead of running them (and creates no venv).
#
# A lock is installed with --require-hashes; the client (clients/python) and the server follow,
# editable and without dependencies (pip refuses unhashed editables in hash-checking mode). The
# torch and dev locks are for Linux x86_64 with Python 3.11 (the slim lock for any platform);
# elsewhere the same versions come from constraints.txt, without hashes. `make lock` refreshes
# the locks (tools/lock.py).
set -euo pipefail
cd "$(dirname "$0")/.."

usage="usage: tools/install.sh VENV slim|torch|dev"
venv=${1:?$usage}
kind=${2:?$usage}
case "${kind}" in
    slim | torch | dev) ;;
    *) echo "${usage}" >&2; exit 2 ;;
esac
torch_cpu_index=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}
torch_cpu_host=${torch_cpu_index#*://}
torch_cpu_host=${torch_cpu_host%%[/:]*}

if [ -n "${DRY_RUN:-}" ]; then
    python=${PYTHON:-python3}
    run() { echo "+ $*"; }
else
    test -x "${venv}/bin/python" || "${PYTHON:-python3}" -m venv "${venv}"
    python="${venv}/bin/python"
    run() { "$@"; }
fi
run "${python}" -m pip install --quiet --upgrade pip
pip=("${python}" -m pip install --quiet)

nvidia_driver() {
    [ -e /proc/driver/nvidia/version ] && return 0
    command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1
}

# Whether a host resolves within 3 s (a resolver that retries takes far longer to say no).
resolves() {
    "${python}" - "$1" <<'EOF'
import socket, sys, threading
found = []
def lookup() -> None:
    try:
        found.append(socket.getaddrinfo(sys.argv[1], 443))
    except OSError:
        pass
thread = threading.Thread(target=lookup, daemon=True)
thread.start()
thread.join(3)
sys.exit(0 if found else 1)
EOF
}

lock_applies() {  # the torch and dev locks: Linux x86_64, Python 3.11
    "${python}" -c 'import platform, sys; sys.exit(not (sys.platform == "linux"
        and platform.machine() == "x86_64" and sys.version_info[:2] == (3, 11)))'
}

index=()
if [ "${kind}" = slim ]; then
    lock=requirements/slim.txt
else
    variant=${TORCH_VARIANT:-}
    if [ -z "${variant}" ]; then
        if nvidia_driver; then variant=cuda; else variant=cpu; fi
    fi
    case "${variant}" in
        cpu | cuda) ;;
        *) echo "TORCH_VARIANT must be cpu or cuda, not '${variant}'" >&2; exit 2 ;;
    esac
    if [ "${variant}" = cpu ]; then
        if resolves "${torch_cpu_host}"; then
            index=(--extra-index-url "${torch_cpu_index}")
        else
            echo "tools/install.sh: ${torch_cpu_host} does not resolve: torch's CPU wheel must come from pip's configuration (find-links, an index)" >&2
        fi
    fi
    lock=requirements/${kind}-${variant}.txt
    if ! lock_applies; then
        extra=$([ "${kind}" = dev ] && echo dev || echo torch)
        echo "tools/install.sh: ${lock} is for Linux x86_64 with Python 3.11: installing .[${extra}] with constraints.txt (${variant} torch)" >&2
        run "${pip[@]}" ${index[@]+"${index[@]}"} -c constraints.txt -e ./clients/python -e ".[${extra}]"
        run "${python}" -m pip check
        exit 0
    fi
fi

echo "tools/install.sh: ${lock}${index[*]:+ (${index[*]})}" >&2
run "${pip[@]}" ${index[@]+"${index[@]}"} --require-hashes -r "${lock}"
run "${pip[@]}" --no-deps -e ./clients/python -e .
run "${python}" -m pip check
