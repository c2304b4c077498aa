#!/usr/bin/env bash
# Cloud TPU VM slice (single- or multi-host): copies this checkout to every worker, sets up a
# Python 3.11 virtual environment there (stock TPU VM images ship an older Python), and starts the
# same command on every worker; jax.distributed finds the coordinator from the TPU metadata.
#
#   launch/tpu_pod.sh TPU_NAME ZONE PRESET WORKDIR [--config.a.b=v ...]
#
# WORKDIR must be a gs:// URL on a multi-host slice: every worker writes the same checkpoints.
# Environment: PROJECT (gcloud --project), REMOTE_DIR (default jamflow_jax, under the worker's
# home), SYNC=0 (the checkout is already on the workers), DRY_RUN=1 (print the commands only).
set -euo pipefail
tpu=${1:?usage: launch/tpu_pod.sh TPU_NAME ZONE PRESET WORKDIR [--config.a.b=v ...]}
zone=${2:?zone}; preset=${3:?preset}; workdir=${4:?workdir}; shift 4
remote=${REMOTE_DIR:-jamflow_jax}
gcloud_flags=(--zone="${zone}" --worker=all)
[[ -n "${PROJECT:-}" ]] && gcloud_flags+=(--project="${PROJECT}")

run() {  # the command, or with DRY_RUN=1 its shell-quoted words
  if [[ "${DRY_RUN:-0}" == 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi
}

# main's arguments, each quoted for the remote shell (no overrides adds nothing, not '').
args=$(printf ' %q' "--config=configs/base.py:${preset}" "--workdir=${workdir}" "$@")
remote_q=$(printf '%q' "${remote}")
# uv comes from PyPI and provides the Python 3.11 the project needs; installs are idempotent.
setup="set -eu; cd ~/${remote_q}
python3 -m pip install --quiet --user 'uv>=0.5'
export PATH=\$HOME/.local/bin:\$PATH
[ -x .venv/bin/python ] || uv venv --quiet --python 3.11 .venv
uv pip install --quiet --python .venv/bin/python -e '.[tpu]'"

if [[ "${SYNC:-1}" == 1 ]]; then
  here=$(cd "$(dirname "$0")/.." && pwd)
  tarball=${TMPDIR:-/tmp}/jamflow_jax_src.$$.tgz
  # The checkout's files that git tracks or would (no virtual environments, caches, runs).
  list=(git -C "${here}" ls-files -z --cached --others --exclude-standard)
  pack=(tar -C "${here}" --null --files-from=- --ignore-failed-read -czf "${tarball}")
  if [[ "${DRY_RUN:-0}" == 1 ]]; then printf '%q ' "${list[@]}"; printf '| '; run "${pack[@]}"
  else "${list[@]}" | "${pack[@]}"; fi
  run gcloud compute tpus tpu-vm scp "${tarball}" "${tpu}:jamflow_jax_src.tgz" "${gcloud_flags[@]}"
  [[ "${DRY_RUN:-0}" == 1 ]] || rm -f "${tarball}"
  setup="mkdir -p ~/${remote_q} && tar -C ~/${remote_q} -xzf ~/jamflow_jax_src.tgz
${setup}"
fi
run gcloud compute tpus tpu-vm ssh "${tpu}" "${gcloud_flags[@]}" --command="${setup}
exec .venv/bin/python -m jamflow_jax.main${args}"
