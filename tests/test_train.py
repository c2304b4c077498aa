import gzip
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from data_pipelines.synthetic import SyntheticBatches
from jamflow_jax import checkpoint as checkpoint_lib, sharding, train
from jamflow_jax.config import ConfigError


def _mesh(config, shape):
  config = config.copy_and_resolve_references()
  config.mesh.shape = shape
  return sharding.make_mesh(config, jax.devices()[: int(np.prod(shape))])


def test_sharded_step_matches_single_device(tiny_config):
  batch = SyntheticBatches(tiny_config).make_batch(0)
  results = []
  for mesh in (sharding.single_device_mesh(tiny_config), _mesh(tiny_config, (2, 2, 2))):
    trainer = train.Trainer(tiny_config, mesh)
    state = trainer.init(seed=0)
    losses = []
    for _ in range(2):
      state, metrics = trainer.step(state, trainer.global_batch(batch))
      losses += [float(metrics["loss"]), float(metrics["grad_norm"])]
    results.append((losses, jax.device_get(state.params)))
  (loss1, params1), (loss8, params8) = results
  np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
  # Adam divides by |g|: entries whose gradient is ~0 may move by up to lr (3e-4 here) on reordered sums.
  for a, b in zip(jax.tree.leaves(params1), jax.tree.leaves(params8)):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)


def test_sharded_step_with_the_pallas_kernel_matches_xla(tiny_config):
  """impl=pallas (interpret mode, per shard under shard_map) against the dense reference on (2,2,2)."""
  tiny_config.model.joint_window_s = 0.1  # 9.4 frames: blocks are skipped
  tiny_config.model.attention_block_q = tiny_config.model.attention_block_k = 16
  batch = SyntheticBatches(tiny_config).make_batch(0)
  results = {}
  for impl in ("xla", "pallas"):
    tiny_config.model.attention_impl = impl
    trainer = train.Trainer(tiny_config, _mesh(tiny_config, (2, 2, 2)))
    state, losses = trainer.init(seed=0), []
    for _ in range(2):
      state, metrics = trainer.step(state, trainer.global_batch(batch))
      losses += [float(metrics["loss"]), float(metrics["grad_norm"])]
    results[impl] = losses, jax.device_get(state.params)
  np.testing.assert_allclose(results["pallas"][0], results["xla"][0], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(results["xla"][1]), jax.tree.leaves(results["pallas"][1])):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


class _Preempted(Exception):
  pass


class _DiesAt(SyntheticBatches):
  """A source whose job is killed when it is asked for batch `index` (a preemption)."""

  def __init__(self, config, index):
    super().__init__(config)
    self.die_at = index

  def __next__(self):
    if self.index == self.die_at:
      raise _Preempted()
    return super().__next__()


def test_resume_reproduces_the_uninterrupted_run(tiny_config, tmp_path):
  tiny_config.train.num_steps = 6
  tiny_config.checkpoint.every_steps = 3
  tiny_config.train.log_every_steps = 1
  tiny_config.optim.schedule = "linear"  # step-dependent learning rate: resuming must get it right
  uninterrupted = train.train(tiny_config, str(tmp_path / "a"), SyntheticBatches(tiny_config))
  with pytest.raises(_Preempted):
    train.train(tiny_config, str(tmp_path / "b"), _DiesAt(tiny_config, 4))
  assert checkpoint_lib.Checkpointer(str(tmp_path / "b"), tiny_config).latest_step() == 3
  resumed = train.train(tiny_config, str(tmp_path / "b"), SyntheticBatches(tiny_config))
  assert sorted(resumed) == [4, 5, 6]
  np.testing.assert_array_equal([resumed[s] for s in (4, 5, 6)], [uninterrupted[s] for s in (4, 5, 6)])


def test_restore_onto_a_different_mesh(tiny_config, tmp_path):
  tiny_config.train.num_steps = 2
  tiny_config.checkpoint.every_steps = 2
  tiny_config.mesh.shape = (8, 1, 1)
  train.train(tiny_config, str(tmp_path), SyntheticBatches(tiny_config))
  saved = checkpoint_lib.Checkpointer(str(tmp_path), tiny_config)
  trainer8 = train.Trainer(tiny_config, _mesh(tiny_config, (8, 1, 1)))
  before, data_before = saved.restore(trainer8.abstract_state)

  tiny_config.mesh.shape = (2, 2, 2)
  trainer = train.Trainer(tiny_config, _mesh(tiny_config, (2, 2, 2)))
  state, data_state = checkpoint_lib.Checkpointer(str(tmp_path), tiny_config).restore(trainer.abstract_state)
  assert int(state.step) == 2 and data_state == data_before == {"index": 2}
  q = state.params["layers"][0]["audio"]["q"]["kernel"]
  assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)
  assert q.sharding.mesh.shape == {"data": 2, "fsdp": 2, "tensor": 2}
  for a, b in zip(jax.tree.leaves(jax.device_get(before)), jax.tree.leaves(jax.device_get(state))):
    np.testing.assert_array_equal(a, b)
  state, metrics = trainer.step(state, trainer.global_batch(SyntheticBatches(tiny_config).make_batch(2)))
  assert int(state.step) == 3 and np.isfinite(float(metrics["loss"]))


def test_learning_rate_schedule(tiny_config):
  tiny_config.optim.warmup_steps, tiny_config.train.num_steps = 10, 110
  tiny_config.optim.learning_rate, tiny_config.optim.end_lr_ratio = 1.0, 0.0
  for name, mid in (("linear", 0.5), ("cosine", 0.5), ("constant", 1.0)):
    tiny_config.optim.schedule = name
    lr = train.learning_rate_schedule(tiny_config)
    np.testing.assert_allclose([lr(0), lr(5), lr(10), lr(60)], [0.0, 0.5, 1.0, mid], atol=1e-6)


def test_main_trains_and_resumes(tmp_path):
  args = [
    sys.executable,
    "-m",
    "jamflow_jax.main",
    "--config=configs/base.py:tiny",
    f"--workdir={tmp_path}",
    "--config.data.source=synthetic",
    "--config.checkpoint.every_steps=3",
    "--config.train.log_every_steps=2",
  ]
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  first = subprocess.run(args + ["--config.train.num_steps=3"], capture_output=True, text=True, timeout=600, env=env)
  assert first.returncode == 0, first.stderr[-3000:]
  assert "mesh {'data': 8, 'fsdp': 1, 'tensor': 1}" in first.stderr
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3"]
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tensorboard"))
  assert (tmp_path / "config.json").exists()
  # The resumed run computes attention with the Pallas kernel: how attention runs is not the model.
  second = subprocess.run(
    args + ["--config.train.num_steps=5", "--config.model.attention_impl=pallas"],
    capture_output=True,
    text=True,
    timeout=600,
    env=env,
  )
  assert second.returncode == 0, second.stderr[-3000:]
  assert "resumed from" in second.stderr and "at step 3" in second.stderr
  assert sorted(os.listdir(tmp_path / "checkpoints"), key=int) == ["3", "5"]


def test_tiny_learns_a_fixed_batch(tiny_config, tmp_path):
  tiny_config.data.synthetic_num_batches = 1  # the same batch every step
  tiny_config.train.num_steps = 300
  tiny_config.checkpoint.every_steps = 300
  losses = train.train(tiny_config, str(tmp_path), SyntheticBatches(tiny_config))
  first = np.mean([losses[s] for s in range(1, 26)])
  last = np.mean([losses[s] for s in range(276, 301)])
  assert last < 0.5 * first, (first, last)


def test_resuming_with_another_model_is_refused(tiny_config, tmp_path):
  tiny_config.train.num_steps = tiny_config.checkpoint.every_steps = 1
  train.train(tiny_config, str(tmp_path), SyntheticBatches(tiny_config))
  tiny_config.model.audio_width = 48
  with pytest.raises(ConfigError, match=r"other model.\* settings \(audio_width: 32 -> 48\)"):
    train.train(tiny_config, str(tmp_path), SyntheticBatches(tiny_config))


def test_profile_steps_writes_a_trace_under_tensorboard(tiny_config, tmp_path):
  tiny_config.train.num_steps = tiny_config.checkpoint.every_steps = 3
  plain = train.train(tiny_config, str(tmp_path / "plain"), SyntheticBatches(tiny_config))
  tiny_config.train.profile_steps = "2,3"
  profiled = train.train(tiny_config, str(tmp_path / "profiled"), SyntheticBatches(tiny_config))
  assert profiled == plain  # tracing leaves the training as it was
  runs = list((tmp_path / "profiled" / "tensorboard" / "plugins" / "profile").iterdir())
  assert len(runs) == 1
  (xplane,) = runs[0].glob("*.xplane.pb")
  (trace,) = runs[0].glob("*.trace.json.gz")
  assert xplane.stat().st_size > 0
  with gzip.open(trace) as f:
    events = json.load(f)["traceEvents"]
  assert sum("Execute (jit__step)" in e.get("name", "") for e in events) >= 2  # the two traced steps
  assert not (tmp_path / "plain" / "tensorboard" / "plugins").exists()
