#!/usr/bin/env bash
# Cloud TPU on GKE through XPK (as MaxText users launch): xpk builds an image of this checkout on
# a Python 3.11 base image and runs the same command on every TPU VM of every slice; jax.distributed
# finds the coordinator from the GKE TPU environment.
#
#   launch/xpk.sh CLUSTER TPU_TYPE PRESET WORKDIR [--config.a.b=v ...]
#   e.g. launch/xpk.sh my-cluster v5p-32 base gs://my-bucket/runs/base
#
# WORKDIR must be a gs:// URL (the pods' disks are gone when the workload ends). Environment:
# WORKLOAD (default jamflow-<preset>-<time>), NUM_SLICES (1), PROJECT, ZONE (gcloud defaults
# otherwise), BASE_IMAGE (python:3.11-slim), DRY_RUN=1 (print the xpk command only).
set -euo pipefail
cluster=${1:?usage: launch/xpk.sh CLUSTER TPU_TYPE PRESET WORKDIR [--config.a.b=v ...]}
tpu_type=${2:?TPU type, e.g. v5p-32}; preset=${3:?preset}; workdir=${4:?workdir}; shift 4
if [[ "${workdir}" != gs://* ]]; then
  echo "WORKDIR=${workdir}: give a gs:// URL; the workers' disks do not outlive the workload" >&2
  exit 2
fi
workload=${WORKLOAD:-jamflow-${preset}-$(date +%m%d-%H%M%S)}
flags=(--cluster="${cluster}" --workload="${workload}" --tpu-type="${tpu_type}"
       --num-slices="${NUM_SLICES:-1}" --base-docker-image="${BASE_IMAGE:-python:3.11-slim}"
       --script-dir="$(cd "$(dirname "$0")/.." && pwd)")
[[ -n "${PROJECT:-}" ]] && flags+=(--project="${PROJECT}")
[[ -n "${ZONE:-}" ]] && flags+=(--zone="${ZONE}")
# The container's command: install into the image's Python 3.11, then train (arguments quoted).
command="python3 -m pip install --quiet -e '.[tpu]' && exec python3 -m jamflow_jax.main$(printf ' %q' \
  "--config=configs/base.py:${preset}" "--workdir=${workdir}" "$@")"
if [[ "${DRY_RUN:-0}" == 1 ]]; then
  printf '%q ' xpk workload create "${flags[@]}" --command="${command}"; echo
else
  xpk workload create "${flags[@]}" --command="${command}"
fi
