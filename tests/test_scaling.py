"""Scaling: scanned layers == unrolled, tensor-parallel and mixed meshes == one device, gradient
accumulation == one batch, and checkpoints that cross the layer layout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.base import get_config
from data_pipelines.synthetic import SyntheticBatches
from jamflow_jax import (
  checkpoint as checkpoint_lib,
  choices,
  config as config_lib,
  flow,
  model as model_lib,
  sharding,
  train,
)
from jamflow_jax.model import attention, layer_stack


def _mesh(config, shape):
  config = config.copy_and_resolve_references()
  config.mesh.shape = shape
  return sharding.make_mesh(config, jax.devices()[: int(np.prod(shape))])


def test_period_of_the_joint_pattern():
  assert layer_stack.period(22, range(1, 22, 2)) == 2
  assert layer_stack.period(4, (1, 3)) == 2
  assert layer_stack.period(6, ()) == 1 and layer_stack.period(6, range(6)) == 1
  assert layer_stack.period(6, (2, 5)) == 3
  assert layer_stack.period(5, (0,)) == 5  # no repeat: one group of every layer


def test_remat_policy_names_match_the_config_options():
  assert tuple(layer_stack.POLICIES) == choices.REMAT_POLICIES


def _loss_and_grads(config, params, batch):
  mesh = sharding.single_device_mesh(config)
  graphdef, _ = model_lib.abstract_model(config, mesh)
  loss = lambda p: flow.objective(nnx.merge(graphdef, p), batch, jax.random.key(0), config.flow)[0]
  with sharding.use_mesh(mesh, config):
    return jax.jit(jax.value_and_grad(loss))(params)


def _assert_trees_close(got, want, rtol):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for path, a, b in zip(*zip(*jax.tree_util.tree_leaves_with_path(want)), jax.tree.leaves(got)):
    a, b = np.asarray(a), np.asarray(b)
    scale = max(float(np.max(np.abs(a))), 1e-6)
    assert float(np.max(np.abs(a - b))) <= rtol * scale, jax.tree_util.keystr(path)


@pytest.mark.parametrize("name", ["tiny_4_layers", "base_width_2_layers"])
def test_scanned_layers_equal_the_unrolled_stack(name):
  """Forward and gradients, f32, with the parameters of one layout converted into the other; the
  scan runs over 2 groups (tiny: (self, joint) x 2; base width: joint x 2)."""
  if name == "tiny_4_layers":
    config = get_config("tiny")
    config.model.depth, config.model.joint_layers = 4, (1, 3)
  else:
    config = get_config("base")
    config.model.depth, config.model.joint_layers, config.model.dtype = 2, (0, 1), "float32"
    config.data.max_mel_frames, config.train.batch_size = 32, 2
  config.data.source = "synthetic"
  config.model.scan_layers, config.model.remat_policy = False, "none"
  batch = {k: jnp.asarray(v) for k, v in SyntheticBatches(config).make_batch(0).items()}
  with sharding.use_mesh(sharding.single_device_mesh(config), config):
    params = nnx.to_pure_dict(nnx.state(model_lib.create(config), nnx.Param))
  loss, grads = _loss_and_grads(config, params, batch)

  scanned = config.copy_and_resolve_references()
  scanned.model.scan_layers, scanned.model.remat_policy = True, "full"
  stacked = layer_stack.convert_for(params, scanned)
  assert stacked[layer_stack.STACKED]["layers"][0]["audio"]["q"]["kernel"].shape[0] == 2
  assert jax.tree.structure(stacked) == jax.tree.structure(model_lib.abstract_params(scanned))
  loss_s, grads_s = _loss_and_grads(scanned, stacked, batch)
  np.testing.assert_allclose(loss_s, loss, rtol=1e-5)
  _assert_trees_close(layer_stack.convert_for(grads_s, config), grads, rtol=1e-5)
  # Converting there and back is the identity.
  _assert_trees_close(layer_stack.convert_for(stacked, config), params, rtol=0)


def test_scanned_parameters_carry_the_layers_axis(tiny_config):
  tiny_config.model.scan_layers = True
  tiny_config.model.depth, tiny_config.model.joint_layers = 4, (1, 3)
  abstract = model_lib.abstract_params(tiny_config, _mesh(tiny_config, (2, 1, 1)))
  q = abstract[layer_stack.STACKED]["layers"][1]["audio"]["q"]["kernel"]
  assert q.shape == (2, 32, 2, 16) and tuple(q.sharding.spec) == (None, "fsdp", "tensor", None)
  # The layers axis is a logical name like any other: a rule may shard it (later rules win).
  tiny_config.sharding.logical_axis_rules = (*tiny_config.sharding.logical_axis_rules, ("layers", "data"))
  abstract = model_lib.abstract_params(tiny_config, _mesh(tiny_config, (2, 1, 1)))
  assert abstract[layer_stack.STACKED]["layers"][1]["audio"]["q"]["kernel"].sharding.spec[0] == "data"


def _run_steps(config, mesh, steps=2):
  trainer = train.Trainer(config, mesh)
  batches = SyntheticBatches(config)
  state, metrics = trainer.init(seed=0), []
  for i in range(steps):
    state, m = trainer.step(state, trainer.global_batch(batches.make_batch(i)))
    metrics.append([float(m["loss"]), float(m["grad_norm"]), float(m["loss/motion"])])
  return np.asarray(metrics), jax.device_get(state.params)


def _eight_heads():
  """tiny with 8 heads of 8 (and an MLP of 64): every model axis splits 8 ways. Adam with eps 1e-3,
  so that its update is Lipschitz in the gradient: with eps 1e-8 an entry whose gradient is ~0 moves
  by the learning rate on the sign of a rounding difference, and 1e-5 on the parameters would test
  nothing but that."""
  config = get_config("tiny")
  config.data.source = "synthetic"
  config.model.heads, config.model.head_dim = 8, 8
  config.optim.eps = 1e-3
  return config


@pytest.fixture(scope="module")
def one_device_run():
  """(config, metrics and parameters after 2 steps on one device): the reference of the tests below."""
  config = _eight_heads()
  return config, _run_steps(config, sharding.single_device_mesh(config))


@pytest.mark.parametrize("shape", [(1, 1, 8), (2, 2, 2), (1, 2, 4)])
def test_tensor_parallel_and_mixed_meshes_equal_one_device(one_device_run, shape):
  config, (want_metrics, want_params) = one_device_run
  mesh = _mesh(config, shape)
  q = train.Trainer(config, mesh).abstract_state.params["layers"][1]["motion"]["q"][
    "kernel"
  ]  # (embed, heads, head_dim)
  assert q.sharding.shard_shape(q.shape) == (32 // shape[1], 8 // shape[2], 8)
  got_metrics, got_params = _run_steps(config, mesh)
  np.testing.assert_allclose(got_metrics, want_metrics, rtol=1e-5)
  _assert_trees_close(got_params, want_params, rtol=1e-5)


@pytest.mark.parametrize("shape, k", [((1, 1, 1), 4), ((2, 2, 1), 2)])
def test_gradient_accumulation_equals_one_batch(one_device_run, shape, k):
  """k microbatches give the update of one batch of 8: on one device, and with the batch split over
  (2,2,1) (each device's 2 rows are one row of each microbatch)."""
  config, (want_metrics, want_params) = one_device_run
  config = config.copy_and_resolve_references()
  config.train.microbatches = k
  got_metrics, got_params = _run_steps(config, _mesh(config, shape))
  np.testing.assert_allclose(got_metrics, want_metrics, rtol=1e-5)
  _assert_trees_close(got_params, want_params, rtol=1e-5)


def test_pallas_joint_attention_runs_per_batch_and_head_shard(monkeypatch):
  """Under (2,1,4) each Pallas call sees its device's rows and heads: B/2 and H/4."""
  config = _eight_heads()
  seen = []
  real = attention.kernel.flash_joint_attention

  def recording(q, k, v, **kw):
    seen.append(q.shape)
    return real(q, k, v, **kw)

  monkeypatch.setattr(attention.kernel, "flash_joint_attention", recording)
  b, length, heads, dim = 4, 32, 8, 8
  q, k, v = (jax.random.normal(jax.random.key(i), (b, length, heads, dim)) for i in range(3))
  time = jnp.broadcast_to(jnp.arange(length, dtype=jnp.float32), (b, length))
  tokens = dict(
    q_mod=jnp.zeros((b, length), jnp.int32),
    kv_mod=jnp.zeros((b, length), jnp.int32),
    q_time=time,
    kv_time=time,
    q_valid=jnp.ones((b, length), bool),
    kv_valid=jnp.ones((b, length), bool),
  )
  with sharding.use_mesh(_mesh(config, (2, 1, 4)), config):
    run = lambda impl: jax.jit(
      lambda q, k, v: attention.joint_attention(
        q, k, v, **tokens, window=4.0, impl=impl, backend="interpret", block_q=16, block_k=16
      )
    )(q, k, v)
    got, want = run("pallas"), run("xla")
  assert seen == [(2, length, 2, dim)]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_microbatches_must_split_every_batch_shard(tiny_config):
  tiny_config.train.microbatches = 3
  with pytest.raises(config_lib.ConfigError, match="train.microbatches=3"):
    config_lib.validate(tiny_config)
  tiny_config.train.microbatches, tiny_config.mesh.shape = 2, (8, 1, 1)
  with pytest.raises(config_lib.ConfigError, match="8 batch shards .* times train.microbatches=2"):
    config_lib.validate(tiny_config, 8)


def test_checkpoints_cross_the_layer_layout(tiny_config, tmp_path):
  """An unrolled run's checkpoint resumes scanned (verified in its own layout, then converted onto
  the scanned shardings), and the scanned run's checkpoint reads back unrolled."""
  tiny_config.model.depth, tiny_config.model.joint_layers = 4, (1, 3)
  mesh = _mesh(tiny_config, (2, 2, 2))
  tiny_config.mesh.shape = (2, 2, 2)
  trainer = train.Trainer(tiny_config, mesh)
  unrolled = trainer.init(seed=0)
  saver = checkpoint_lib.Checkpointer(str(tmp_path), tiny_config)
  saver.save(0, unrolled, {"index": 0})
  saver.wait()
  saver.close()
  unrolled = jax.device_get(unrolled)

  scanned = tiny_config.copy_and_resolve_references()
  scanned.model.scan_layers, scanned.model.remat_policy = True, "full"
  trainer = train.Trainer(scanned, mesh)
  state, data = checkpoint_lib.Checkpointer(str(tmp_path), scanned).restore(trainer.abstract_state)
  assert data == {"index": 0} and int(state.step) == 0
  want = layer_stack.convert_for(unrolled, scanned)
  _assert_trees_close(jax.device_get(state), want, rtol=0)
  q = lambda params: params[layer_stack.STACKED]["layers"][1]["audio"]["q"]["kernel"]
  assert q(state.params).sharding == q(trainer.abstract_state.params).sharding
  ema, step = checkpoint_lib.Checkpointer(str(tmp_path), scanned).restore_params(trainer.abstract_state.params)
  assert step == 0
  _assert_trees_close(jax.device_get(ema), want.ema_params, rtol=0)

  scanned.train.num_steps = 1  # the loop resumes from it, saves step 1 scanned ...
  assert sorted(train.train(scanned, str(tmp_path), SyntheticBatches(scanned))) == [1]
  # ... which an unrolled model reads back
  back, _ = checkpoint_lib.Checkpointer(str(tmp_path), tiny_config).restore(
    train.Trainer(tiny_config, mesh).abstract_state
  )
  assert int(back.step) == 1 and sorted(back.params["layers"]) == [0, 1, 2, 3]


def test_scaled_presets():
  """1b / 3b / 7b: the parameter counts their comment gives, FSDP over every device by default."""
  for preset, billions in (("1b", 1.232), ("3b", 3.218), ("7b", 7.314)):
    config = get_config(preset)
    config_lib.validate(config)
    assert round(model_lib.count_params(model_lib.abstract_params(config)) / 1e9, 3) == billions
    m = config.model
    assert m.scan_layers and m.remat_policy == "full" and tuple(config.mesh.shape) == (1, -1, 1)
    assert m.heads * m.head_dim == m.audio_width and layer_stack.period(m.depth, m.joint_layers) == 2


needs_libtpu = pytest.mark.skipif(
  __import__("importlib").util.find_spec("libtpu") is None, reason="needs the tpu extra (jax[tpu])"
)


@needs_libtpu
@pytest.mark.parametrize("preset", ["base", "7b"])
def test_state_shards_over_a_64_chip_slice(preset):
  """FSDP over v5p:4x4x4: every parameter divides, and each chip holds ~1/64 of the train state."""
  from jamflow_jax import aot

  config = get_config(preset)
  config.mesh.shape = (1, -1, 1)
  devices = aot.topology_devices("v5p:4x4x4")
  trainer = train.Trainer(config, sharding.make_mesh(config, devices))
  held, ideal = aot.state_bytes_per_device(trainer.abstract_state)
  assert held / ideal < 1.15


@needs_libtpu
def test_tpu_compile_script_writes_its_rows(tmp_path):
  """`python -m launch.tpu_compile` on tiny: the table and its JSON rows (the fields other tools read)."""
  import json
  import os
  import subprocess
  import sys

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = tmp_path / "rows.json"
  run = subprocess.run(
    [
      sys.executable,
      "-m",
      "launch.tpu_compile",
      "--preset=tiny",
      "--topology=v5p:2x2x2",
      "--impls=pallas",
      "--meshes=2x2x2",
      "--noattention",
      "--config=configs/base.py",
      "--config.model.scan_layers=True",
      f"--json={out}",
    ],
    capture_output=True,
    text=True,
    timeout=600,
    cwd=root,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )
  assert run.returncode == 0, run.stderr[-2000:]
  [row] = json.loads(out.read_text())
  assert {k: row[k] for k in ("preset", "topology", "mesh", "impl", "layout")} == {
    "preset": "tiny",
    "topology": "v5p:2x2x2",
    "mesh": "2x2x2",
    "impl": "pallas",
    "layout": "scanned",
  }
  assert 0 < row["mem_gib_per_chip"] < 1 and row["compile_s"] > 0 and row["headroom"] > 0.99
  assert "error" not in row and "train step" in run.stdout
