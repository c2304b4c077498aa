"""JAM-Flow's presets: the configs behind `--config=configs/base.py[:PRESET]` (and behind a saved run's
config.json, whose settings are read over its preset's defaults).

Presets:
  (none) / base  paper scale: an F5TTS_Base Audio-DiT (dim 1024, depth 22, heads 16, ff_mult 2,
                 text_dim 512, 4 ConvNeXtV2 text blocks) beside a Motion-DiT of the same depth,
                 joint attention in every other layer (~0.5B parameters in all).
  demo           small enough to learn audio-driven lip motion on 2 CPU cores in minutes.
  tiny           for tests: compiles in seconds.
  1b, 3b, 7b     JAM-Flow scaled up (1.23B, 3.22B, 7.31B parameters): see _scaled
  f5             base whose Audio-DiT is exactly F5TTS_v1_Base (RoPE on all heads, text padding masked,
                 no qk-norm, F5's 2545-token vocab), to start from its checkpoint:
                 --config.model.text_vocab=/path/vocab.txt (required) --config.train.init_from=/path/model.safetensors

Every field can be overridden on the command line, e.g. `--config.train.num_steps=100`.
"""

import ml_collections
from ml_collections import config_dict

from jamflow_jax.errors import ConfigError

PRESETS = ("base", "demo", "tiny", "f5", "1b", "3b", "7b")


def _base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.preset = "base"

  c.model = m = ml_collections.ConfigDict()
  m.mel_dim = 100  # log-mel bins (DESIGN data contract)
  m.motion_dim = 61  # FLAME motion features (DESIGN motion layout)
  m.audio_width = 1024  # Audio-DiT hidden size (F5TTS_Base)
  m.motion_width = 640  # Motion-DiT hidden size
  m.depth = 22  # layers in each stream
  m.heads = 16  # attention heads, shared by both streams (joint attention)
  m.head_dim = 64
  m.ff_mult = 2
  m.text_vocab_size = 256  # embedding rows: the tokenizer's ids, id 0 the filler
  m.text_vocab = ""  # empty: built-in Latin-1 ids (jamflow_jax.text); else an F5-TTS vocab.txt
  m.text_mask_padding = False  # zero the text features at filler positions (F5TTS_v1_Base)
  # A withheld transcript (CFG), with text_mask_padding: filler = all filler, every position zeroed |
  # f5 = F5-TTS's: the transcript's positions keep the filler embedding (its padding mask is kept)
  m.text_null = "filler"
  m.text_dim = 512
  m.text_conv_layers = 4  # ConvNeXtV2 blocks of the text encoder
  m.conv_pos_kernel = 31
  m.conv_pos_groups = 16
  m.time_freq_dim = 256  # sinusoidal timestep features
  m.rope_theta = 10000.0
  m.rope_heads = 0  # audio stream: RoPE on the first n heads, 0 = all (F5TTS_Base: 1)
  m.qk_norm = True
  m.joint_layers = tuple(range(1, 22, 2))
  m.joint_window_s = 0.5  # local cross-modal window, seconds either side
  m.attention_impl = "xla"  # xla (dense reference) | pallas (block-sparse kernel) | cudnn (GPU)
  m.attention_backend = "auto"  # pallas lowering: auto (devices) | triton | mosaic_tpu | interpret | interpret_triton
  m.attention_block_q = 0  # pallas query / key block sizes; 0 = the backend's default
  m.attention_block_k = 0
  # F5TTS_v1_Base's attn_mask_enabled=False: valid frames also attend to the padded frames of their
  # batch, whose attention outputs are zeroed. Only for exact parity with F5-TTS on padded batches.
  m.attend_padding = False
  m.dtype = "bfloat16"  # compute dtype; parameters stay float32
  m.scan_layers = True  # layers under one jax.lax.scan over the repeating joint pattern (fast
  # compiles; FSDP gathers one group's weights at a time); False: a loop
  m.remat_policy = "full"  # what the backward pass keeps of each layer's forward: none | full (the
  # layer inputs) | save_dots | save_dots_no_batch | save_qkv_proj | save_attention

  c.data = d = ml_collections.ConfigDict()
  d.path = ""  # corpus directory (shards + corpus.json); empty = the built-in corpus
  d.source = ""  # "": shards; "tfds": tfds.data_source(data.tfds_name, data_dir=data.path);
  # "synthetic": clearly labelled random batches (tests, benchmarks)
  d.tfds_name = "jamflow_corpus"
  d.split = "train"
  d.num_buckets = 8  # padded lengths = length quantiles (one compile per bucket)
  d.bucket_multiple = 16
  d.sort_window = 32  # batches sorted by length together (see data_pipelines.pipeline)
  d.on_bad_record = "fail"  # or "skip": replaced within its batch, counted and logged
  d.num_threads = 2  # grain in-process loading threads
  d.prefetch = 4  # batches loaded ahead
  d.worker_processes = 0  # >0: grain worker processes instead (many-core hosts)
  d.corpus = ml_collections.ConfigDict()  # the built-in eSpeak corpus (data.path empty)
  d.corpus.num_utterances = 2000
  d.corpus.seed = 0
  d.corpus.cache_dir = ""  # empty: $JAMFLOW_CACHE or ~/.cache/jamflow_jax
  d.sample_rate = 24000
  d.hop_length = 256  # mel frame rate = sample_rate / hop_length = 93.75 fps
  d.motion_fps = 25.0
  d.max_mel_frames = 1024  # longest utterance in a batch (~10.9 s)
  d.synthetic_num_batches = 0  # synthetic source only: >0 cycles over that many batches

  c.flow = f = ml_collections.ConfigDict()
  f.time_sampling = "uniform"  # or "logit_normal"
  f.logit_mean = 0.0
  f.logit_std = 1.0
  f.span_min = 0.7  # generated span, fraction of the valid length (F5-TTS)
  f.span_max = 1.0
  f.task_mix = ml_collections.ConfigDict({"joint": 0.4, "tts": 0.2, "a2m": 0.2, "dub": 0.2})
  f.a2m_text_drop = 0.5  # a2m: probability that the transcript is withheld
  f.drop_text = 0.1  # classifier-free guidance dropout
  f.drop_audio_cond = 0.2
  f.drop_motion_cond = 0.2
  f.audio_loss_weight = 1.0
  f.motion_loss_weight = 1.0

  c.optim = o = ml_collections.ConfigDict()
  o.learning_rate = 7.5e-5  # F5-TTS Base
  o.warmup_steps = 20000
  o.schedule = "linear"  # decay after warmup: linear | cosine | constant
  o.end_lr_ratio = 0.0
  o.b1 = 0.9
  o.b2 = 0.999
  o.eps = 1e-8
  o.weight_decay = 0.01
  o.grad_clip = 1.0
  o.ema_decay = 0.9999

  c.train = t = ml_collections.ConfigDict()
  t.num_steps = 1_200_000
  t.batch_size = 256  # global, across all processes
  t.microbatches = 1  # gradient accumulation: the batch runs as this many microbatches whose
  # gradients add up to the whole batch's (same update, less memory)
  t.seed = 0
  t.log_every_steps = 100
  t.peak_flops_per_device = 0.0  # 0 = look up the device kind (for MFU)
  t.metrics_file = ""  # also append each interval's per-step losses and scalars, and each
  # evaluation's scores, as JSON lines to this local file, per process
  # ({process} = its index)
  t.skip_nonfinite = False  # a NaN/inf loss or gradient norm: False stops the run naming the
  # step, True skips that update (counted as skipped_steps)
  t.init_from = ""  # F5-TTS checkpoint (.safetensors / .pt): its weights start the audio
  # stream when the workdir has no checkpoint yet
  t.profile_steps = ""  # "START,END": a jax.profiler trace of steps START..END (1-based, inclusive)
  # into DIR/tensorboard/plugins/profile/ (process 0; TensorBoard's profile tab or Perfetto)
  t.init_layout = "v1"  # v1 (F5TTS_v1_Base) | base (F5TTS_Base: model.rope_heads=1)

  c.checkpoint = k = ml_collections.ConfigDict()
  k.every_steps = 10000
  k.max_to_keep = 3
  k.async_save = True

  c.sample = s = ml_collections.ConfigDict()  # --mode=sample and jamflow_jax.generate
  s.solver = "euler"  # euler | midpoint (two model evaluations a step)
  s.nfe = 32  # model evaluations per sample
  s.sway = -1.0  # F5-TTS sway sampling coefficient (0 = uniform time steps)
  s.cfg_text = 2.0  # classifier-free guidance strength per condition (0 = off)
  s.cfg_audio = 2.0
  s.cfg_motion = 2.0
  s.seed = 0
  s.vocoder = "griffin_lim"  # or the path of a Vocos mel-24khz checkpoint (.bin / .safetensors)
  s.chars_per_second = 15.0  # speaking rate for durations without a voice prompt
  s.speed = 1.0  # > 1 speaks faster
  s.max_frames = 0  # longest chunk in mel frames; 0 = data.max_mel_frames (trained length)
  s.overlap_s = 1.0  # long form: seconds of the previous chunk each chunk continues
  s.crossfade_s = 0.32  # long form: of the overlap, the end both chunks render and cross-fade
  s.length_bucket = 64  # lengths padded to multiples of this (one compile per bucket)
  s.batch_jobs = 8  # --jobs: up to this many jobs' model calls of one length bucket share a call (1 = one by one)
  s.use_ema = True  # sample with the EMA weights
  s.video = True  # also write NAME.mp4: the face (render.face_model) speaking NAME.wav

  c.export = x = ml_collections.ConfigDict()  # --mode=export and jamflow_jax.export
  x.use_ema = True  # export the EMA weights (False: the raw ones)
  x.dtype = "float32"  # float32 | bfloat16
  x.format = "orbax"  # orbax (params-only, for Pipeline.from_export) | f5_safetensors (F5-TTS's DiT)

  c.render = r = ml_collections.ConfigDict()  # videos of the face (sample, eval) and vertex metrics
  r.face_model = ""  # FLAME .pkl / .npz the user has; empty = the stand-in face
  r.size = 256  # video frames are size x size pixels

  c.eval = e = ml_collections.ConfigDict()  # --mode=eval and the evaluations during training
  e.tasks = ("a2m", "joint", "dub")
  e.split = "validation"
  e.num_examples = 32  # validation utterances scored by --mode=eval
  e.every_steps = 0  # during training: evaluate every N steps (0 = never) ...
  e.train_examples = 8  # ... on this many utterances, into TensorBoard
  e.render = True  # write a video and a plot of the first utterance
  e.seed = 0

  c.mesh = ml_collections.ConfigDict()
  c.mesh.shape = (-1, 1, 1)  # -1 fills with the remaining devices
  c.mesh.axes = ("data", "fsdp", "tensor")

  c.sharding = ml_collections.ConfigDict()
  # logical name -> mesh axes. Parameters: embed is FSDP-sharded, heads/mlp tensor-sharded.
  # Activations use the act_* names so that batch and FSDP do not claim the same mesh axis.
  c.sharding.logical_axis_rules = (
    ("batch", ("data", "fsdp")),
    ("layers", None),  # the scanned stack's axis of parameters, unsharded (as MaxText)
    ("length", None),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("vocab", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
  )
  return c


def _demo(c: ml_collections.ConfigDict) -> None:
  m = c.model
  m.audio_width, m.motion_width, m.depth, m.heads, m.head_dim = 192, 128, 4, 4, 48
  m.text_dim, m.text_conv_layers = 96, 2
  m.joint_layers = (1, 3)
  m.dtype, m.scan_layers, m.remat_policy = "float32", False, "none"
  c.data.max_mel_frames, c.data.num_buckets = 256, 4
  c.optim.learning_rate, c.optim.warmup_steps, c.optim.schedule = 1e-3, 200, "cosine"
  c.optim.ema_decay = 0.999
  # Motion weighted 3x and 3000 steps: what it takes on 2 cores (~20 min) for audio -> motion lip
  # error to fall below half of the mean-motion baseline (0.47 of it; 0.61 at weight 1 / 2000 steps).
  c.flow.motion_loss_weight = 3.0
  c.train.num_steps, c.train.batch_size, c.train.log_every_steps = 3000, 8, 25
  c.checkpoint.every_steps = 500
  c.eval.every_steps = 1000
  c.sample.chars_per_second = 18.0  # the built-in eSpeak corpus speaks ~18 characters a second


def _f5(c: ml_collections.ConfigDict) -> None:
  # Everything else of base is F5TTS_v1_Base already (1024 wide, 22 deep, 16 x 64 heads, ff_mult 2,
  # text 512 with 4 ConvNeXt blocks, conv position 31 / 16 groups, 256 time features, RoPE 10000).
  m = c.model
  m.qk_norm = False  # F5-TTS has none; one flag for both streams, so motion goes without too
  m.rope_heads, m.text_mask_padding, m.text_null = 0, True, "f5"
  m.text_vocab_size = 2546  # F5's vocab.txt: 2545 tokens + the filler
  m.text_vocab = config_dict.placeholder(str)  # required: --config.model.text_vocab=/path/to/vocab.txt


def _tiny(c: ml_collections.ConfigDict) -> None:
  m = c.model
  m.audio_width, m.motion_width, m.depth, m.heads, m.head_dim = 32, 32, 2, 2, 16
  m.text_dim, m.text_conv_layers, m.time_freq_dim = 16, 1, 32
  m.joint_layers = (1,)
  m.dtype, m.scan_layers, m.remat_policy = "float32", False, "none"
  c.data.max_mel_frames = 48
  c.optim.learning_rate, c.optim.warmup_steps, c.optim.schedule = 3e-3, 10, "constant"
  c.optim.ema_decay = 0.99
  c.train.num_steps, c.train.batch_size, c.train.log_every_steps = 300, 8, 50
  c.checkpoint.every_steps = 100


# (audio width, depth, head_dim) of the scaled presets; parameters in all (model.count_params).
_SCALES = {
  "1b": (1536, 24, 64),  # 1.232B
  "3b": (2304, 28, 128),  # 3.218B
  "7b": (3072, 36, 128),
}  # 7.314B


def _scaled(c: ml_collections.ConfigDict, name: str) -> None:
  """base grown the way DiTs are scaled (DiT, SD3's MM-DiT, F5-TTS's Base -> Large): width and
  depth together, parameters ~ 14 x width^2 x depth per stream.

  Rule, from base (1024 wide, 22 deep, 16 x 64 heads): audio width x1.5 per step (1536, 2304, 3072
  at the last step x1.33), depth +2 / +4 / +8 (24, 28, 36); head_dim 64 up to width 1536, then 128
  (SD3 / Llama: heads stay few and wide); heads = audio width / head_dim, shared by both streams
  (joint attention concatenates them); motion width 2/3 of the audio width (base: 640 / 1024);
  text encoder F5-style (4 ConvNeXtV2 blocks) at half the audio width (F5: 512 / 1024); joint
  attention in every other layer, as base. Every width divides by 64, so the fsdp axis of a 64-chip
  slice shards every weight matrix.

  These do not fit one chip with their optimizer state: the mesh defaults to FSDP over every device
  (1, -1, 1), layers scanned and fully rematerialised.
  """
  width, depth, head_dim = _SCALES[name]
  m = c.model
  m.audio_width, m.motion_width, m.depth = width, width * 2 // 3, depth
  m.head_dim, m.heads = head_dim, width // head_dim
  m.text_dim = width // 2
  m.joint_layers = tuple(range(1, depth, 2))
  m.scan_layers, m.remat_policy = True, "full"
  c.mesh.shape = (1, -1, 1)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  preset = arg or "base"
  if preset not in PRESETS:
    raise ConfigError(f"unknown preset {preset!r} (configs/base.py:PRESET); choose one of {', '.join(PRESETS)}")
  c = _base()
  c.preset = preset
  if preset in _SCALES:
    _scaled(c, preset)
  else:
    {"base": lambda c: None, "demo": _demo, "tiny": _tiny, "f5": _f5}[preset](c)
  return c


def from_saved(saved: dict) -> ml_collections.ConfigDict:
  """A saved config (config.json of a run or an export) over its preset's defaults, so settings newer
  than the save get their defaults and settings this version no longer has are dropped."""
  config = get_config(saved.get("preset", "base"))

  def merge(node: ml_collections.ConfigDict, values: dict) -> None:
    for key, value in values.items():
      if key not in node:
        continue
      if isinstance(node[key], ml_collections.ConfigDict) and isinstance(value, dict):
        merge(node[key], value)
      else:
        node[key] = tuple(value) if isinstance(node[key], tuple) and isinstance(value, list) else value

  merge(config, saved)
  return config
