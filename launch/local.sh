#!/usr/bin/env bash
# One host, all its devices (CPU, one or more GPUs, or a single TPU VM).
#   launch/local.sh PRESET WORKDIR [--config.a.b=v ...]
set -euo pipefail
preset=${1:?preset (base, demo, tiny)}; workdir=${2:?workdir}; shift 2
exec python -m jamflow_jax.main --config="configs/base.py:${preset}" --workdir="${workdir}" "$@"
