#!/usr/bin/env bash
# Cloud TPU pod slice: the same command on every worker; jax.distributed.initialize() finds the
# coordinator from the TPU metadata (main calls it when TPU_WORKER_HOSTNAMES lists several hosts).
# WORKDIR should be a gs:// path (Orbax and TensorBoard write to it from every host).
#   launch/tpu_pod.sh TPU_NAME ZONE PRESET WORKDIR [--config.a.b=v ...]
# The repository is expected at ~/jamflow_jax on each worker (e.g. via `gcloud ... scp --worker=all`).
set -euo pipefail
tpu=${1:?TPU name}; zone=${2:?zone}; preset=${3:?preset}; workdir=${4:?workdir}; shift 4
# Each override shell-quoted for the remote shell; none at all must add nothing (not '').
overrides=""
for arg in "$@"; do overrides+=" $(printf '%q' "${arg}")"; done
gcloud compute tpus tpu-vm ssh "${tpu}" --zone="${zone}" --worker=all --command="
  set -e; cd ~/jamflow_jax
  python3 -m pip install -q -e . 'jax[tpu]'
  python3 -m jamflow_jax.main --config=configs/base.py:${preset} --workdir=${workdir} ${overrides}"
