"""The values a config key may take, for checks and help texts (a leaf: loading a config file or
validating one imports no kernel).

The modules that implement a choice import its tuple from here: `model.attention` (ATTENTION_IMPLS),
`kernels.joint_attention` (ATTENTION_BACKENDS, PLATFORM_BACKENDS), `model.layer_stack`
(REMAT_POLICIES), `sampling` (SOLVERS), `model.f5tts` (F5_LAYOUTS).
"""

ATTENTION_IMPLS = ("xla", "pallas", "cudnn")  # model.attention_impl
# model.attention_backend; "interpret" runs the TPU kernels in the Pallas interpreter, "interpret_triton" the GPU ones.
ATTENTION_BACKENDS = ("auto", "triton", "mosaic_tpu", "interpret", "interpret_triton")
# The Pallas lowering "auto" resolves to on each JAX platform (others: the interpreter).
PLATFORM_BACKENDS = {"gpu": "triton", "cuda": "triton", "rocm": "triton", "tpu": "mosaic_tpu"}
DTYPES = ("float32", "bfloat16")  # model.dtype
# model.remat_policy (jamflow_jax.model.layer_stack maps each to a jax.checkpoint policy).
REMAT_POLICIES = ("none", "full", "save_dots", "save_dots_no_batch", "save_qkv_proj", "save_attention")
F5_LAYOUTS = ("v1", "base")  # train.init_layout: F5TTS_v1_Base | F5TTS_Base
# model.text_null, what a withheld transcript looks like with model.text_mask_padding (model.text_encoder).
TEXT_NULLS = ("filler", "f5")
SOLVERS = ("euler", "midpoint")  # sample.solver
EXPORT_FORMATS = ("orbax", "f5_safetensors")  # export.format
TIME_SAMPLING = ("uniform", "logit_normal")  # flow.time_sampling
SCHEDULES = ("linear", "cosine", "constant")  # optim.schedule
DATA_SOURCES = ("", "tfds", "synthetic")  # data.source
ON_BAD_RECORD = ("fail", "skip")  # data.on_bad_record
