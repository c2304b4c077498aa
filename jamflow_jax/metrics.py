"""Training metrics: averaging over a logging interval, TensorBoard event files, a console bar.

TensorBoard events are written with tensorboardX (no TensorFlow) to DIR/tensorboard, DIR local or a
URL (gs://...: written through etils.epath, see `EpathRecordWriter`). Per-task losses arrive from the
step as frame-weighted sums and counts (`sum/<modality>/<task>`, `count/...`), so the interval
average is exact however the tasks fell in each batch.
"""

import collections
import io
import os
import pathlib
import shutil
import tempfile
import time

import jax
import numpy as np
import tqdm
from absl import logging
from etils import epath
from tensorboardX import SummaryWriter, record_writer

from jamflow_jax import config as config_lib, flops, paths


def reduce_interval(step_metrics: list[dict]) -> dict[str, float]:
  """Host-side metrics from a list of per-step dicts: means, and per-task losses from sums/counts."""
  totals: dict[str, float] = collections.defaultdict(float)
  for metrics in jax.device_get(step_metrics):
    for k, v in metrics.items():
      totals[k] += float(v)
  out = {k: v / len(step_metrics) for k, v in totals.items() if not k.startswith(("sum/", "count/"))}
  for k, v in totals.items():
    if k.startswith("sum/"):
      count = totals["count/" + k[4:]]
      if count > 0:
        out["loss/" + k[4:]] = v / count
  return out


class EpathRecordWriter:
  """An event file at a URL, written through etils.epath (tensorboardX's own gs:// and s3:// writers
  need google-cloud-storage / boto3). Objects in a bucket cannot be appended to, so each flush with
  new events rewrites the whole object, as TensorFlow's gfile does on GCS."""

  def __init__(self, path: str):
    self.path = epath.Path(path)
    self.buffer = io.BytesIO()
    self.written = -1  # bytes of the buffer in the object; -1: the object is not written yet

  def write(self, data: bytes) -> None:
    self.buffer.write(data)

  def flush(self) -> None:
    if self.buffer.tell() != self.written:
      self.path.write_bytes(self.buffer.getvalue())
      self.written = self.buffer.tell()

  def close(self) -> None:
    self.flush()


class EpathRecordWriterFactory:
  """tensorboardX's record-writer factory interface (`record_writer.register_writer_factory`)."""

  def open(self, path: str) -> EpathRecordWriter:
    return EpathRecordWriter(path)

  def directory_check(self, path: str) -> None:
    epath.Path(path).mkdir(parents=True, exist_ok=True)


def summary_writer(directory: epath.Path) -> SummaryWriter:
  """A tensorboardX writer on `directory`: local files, or through epath for a URL's scheme."""
  if paths.is_url(directory):
    record_writer.register_writer_factory(os.fspath(directory).split("://")[0], EpathRecordWriterFactory())
  return SummaryWriter(os.fspath(directory))


class MetricsLogger:
  """Writes scalars to DIR/tensorboard and a progress bar to the console (process 0 only)."""

  def __init__(self, workdir: str | os.PathLike, total_steps: int, initial_step: int):
    self.active = jax.process_index() == 0
    self.writer = summary_writer(paths.workdir_path(workdir) / "tensorboard") if self.active else None
    self.bar = tqdm.tqdm(
      total=total_steps, initial=initial_step, unit="step", dynamic_ncols=True, disable=not self.active, mininterval=1.0
    )

  def advance(self, n: int = 1) -> None:
    self.bar.update(n)

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if not self.active:
      return
    for k, v in scalars.items():
      if np.isfinite(v):
        self.writer.add_scalar(k, v, step)
    self.writer.flush()
    shown = {k: scalars[k] for k in ("loss", "loss/audio", "loss/motion", "grad_norm", "steps_per_s") if k in scalars}
    self.bar.set_postfix({k.replace("loss/", ""): f"{v:.4g}" for k, v in shown.items()}, refresh=False)
    logging.info("step %d: %s", step, ", ".join(f"{k}={v:.5g}" for k, v in sorted(scalars.items())))

  def close(self) -> None:
    if self.active:
      self.writer.close()
    self.bar.close()


class StepProfiler:
  """A jax.profiler trace of the steps train.profile_steps names (those of them this run takes) into
  DIR/tensorboard/plugins/profile/<run>/ (<host>.xplane.pb for TensorBoard's profile tab or xprof,
  <host>.trace.json.gz: Chrome trace events, for ui.perfetto.dev); process 0 only. The profiler writes local files: they
  are traced into a temporary directory and copied through etils.epath (DIR may be a URL)."""

  def __init__(self, config, workdir: str | os.PathLike, first_step: int):
    steps = config_lib.profile_steps(config) if jax.process_index() == 0 else None
    self.start, self.end = (max(steps[0], first_step + 1), steps[1]) if steps else (0, -1)
    self.target = paths.workdir_path(workdir) / "tensorboard"
    self.local = None  # the temporary directory while tracing

  def before(self, step: int, state) -> None:
    """Call before step `step` is dispatched: the steps dispatched before it are waited for
    (`state`), so the trace holds the traced steps' work, not a backlog of earlier ones."""
    if step == self.start and self.start <= self.end:
      jax.block_until_ready(state)
      self.local = tempfile.mkdtemp(prefix="jamflow_profile_")
      jax.profiler.start_trace(self.local)

  def after(self, step: int, state) -> None:
    """Call after step `step` is dispatched: the last traced step's work is waited for (`state`)."""
    if self.local is not None and step == self.end:
      jax.block_until_ready(state)
      self.close()

  def close(self) -> None:
    """Ends a trace in progress (also when the run stops early) and copies it under DIR/tensorboard."""
    if self.local is None:
      return
    jax.profiler.stop_trace()
    local, self.local = pathlib.Path(self.local), None  # a local directory: pathlib walks it
    for file in local.rglob("*"):
      if file.is_file():
        out = self.target / file.relative_to(local).as_posix()
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(file.read_bytes())
    shutil.rmtree(local)
    logging.info("profile of steps %d-%d written to %s", self.start, self.end, self.target / "plugins" / "profile")


class Throughput:
  """Steps/s, examples/s, valid mel frames/s and MFU of each logging interval.

  Counted from this process' rows of each batch (the global count would need a collective), scaled
  to the global batch; FLOPs at each batch's padded shape (batches are length-bucketed).
  """

  def __init__(self, config, rows: int, first_step: int):
    self.config, self.batch_size = config, config.train.batch_size
    self.scale = self.batch_size / rows
    self.peak = flops.peak_flops_per_device(config) * jax.device_count()
    self.t_last, self.n_last, self.frames, self.flops = None, first_step, 0.0, 0.0

  def add(self, host_batch: dict[str, np.ndarray]) -> None:
    """Counts one step's batch (this process' rows)."""
    self.frames += float(np.sum(host_batch["mel_valid"])) * self.scale
    self.flops += (
      flops.train_flops(self.config, host_batch["mel"].shape[1], host_batch["motion"].shape[1]) * self.batch_size
    )

  def interval(self, step: int) -> dict[str, float]:
    """The rates since the last call (none for the first interval: it includes compilation)."""
    now, rates = time.perf_counter(), {}
    if self.t_last is not None:
      seconds = now - self.t_last
      steps_per_s = (step - self.n_last) / seconds
      rates = {
        "steps_per_s": steps_per_s,
        "examples_per_s": steps_per_s * self.batch_size,
        "frames_per_s": self.frames / seconds,
      }
      if self.peak:
        rates["mfu"] = self.flops / seconds / self.peak
    self.t_last, self.n_last, self.frames, self.flops = now, step, 0.0, 0.0
    return rates
