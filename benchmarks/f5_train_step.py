"""F5-TTS's own PyTorch train step, timed: the other side of the device suite's ours / F5-TTS row.

  PYTHON -m benchmarks.f5_train_step [--dim=1024 --depth=22 --heads=16 --head_dim=64 --ff_mult=2
      --text_dim=512 --conv_layers=4 --vocab_size=2546] [--batch=8 --frames=1024] [--steps=10]
      [--dtype=bfloat16|float32] [--json=row.json]

PYTHON is one that has torch and f5-tts (a side environment: neither is a dependency of this
project, `benchmarks.device_suite --f5_install` makes one), so this script imports neither jax nor
jamflow_jax, and takes argparse flags. The defaults are F5TTS_v1_Base.

What is timed is what F5-TTS's Trainer does per step: `CFM(DiT(...))` with F5TTS_v1_Base's settings
(text_mask_padding, no qk-norm, RoPE on every head, attn_mask_enabled False, torch SDPA), F5's CFM
loss (a random 70-100% span, CFG dropout), bf16 autocast as its accelerate mixed precision
(float32 on a CPU unless --dtype says otherwise), backward, gradient clipping at 1.0, fused AdamW at
7.5e-5 and ema_pytorch's EMA (F5's defaults: an update every 10 steps). Batches are random mels and
ids, all frames valid. Prints one JSON row (and writes it to --json): step_ms (median of --steps
after 3 warm-up steps), fwd_ms (the loss alone, no gradient), params_M, peak memory on a GPU.
"""

import argparse
import json
import statistics
import time
from importlib import metadata


def _flags(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  for name, default in (
    ("dim", 1024),
    ("depth", 22),
    ("heads", 16),
    ("head_dim", 64),
    ("ff_mult", 2),
    ("text_dim", 512),
    ("conv_layers", 4),
    ("vocab_size", 2546),
    ("batch", 8),
    ("frames", 1024),
    ("steps", 10),
  ):
    p.add_argument(f"--{name}", type=int, default=default)
  p.add_argument("--dtype", choices=("bfloat16", "float32", "auto"), default="auto", help="auto: bf16 on a GPU")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--json", default="", help="also write the row to this file")
  return p.parse_args(argv)


def main(argv=None) -> dict:
  a = _flags(argv)
  import torch
  from ema_pytorch import EMA
  from f5_tts.model import CFM, DiT

  torch.manual_seed(a.seed)
  device = "cuda" if torch.cuda.is_available() else "cpu"
  dtype = a.dtype if a.dtype != "auto" else ("bfloat16" if device == "cuda" else "float32")
  dit = DiT(
    dim=a.dim,
    depth=a.depth,
    heads=a.heads,
    dim_head=a.head_dim,
    ff_mult=a.ff_mult,
    mel_dim=100,
    text_num_embeds=a.vocab_size - 1,  # F5 adds the filler
    text_dim=a.text_dim,
    conv_layers=a.conv_layers,
    text_mask_padding=True,
    qk_norm=None,
    pe_attn_head=None,
    attn_backend="torch",
    attn_mask_enabled=False,
  )
  model = CFM(transformer=dit, mel_spec_kwargs=dict(mel_spec_type="vocos")).to(device)
  ema = EMA(model, include_online_model=False, update_after_step=0)  # F5: update_every 10
  optimizer = torch.optim.AdamW(model.parameters(), lr=7.5e-5, fused=device == "cuda")
  mel = torch.randn(a.batch, a.frames, 100, device=device)
  text = torch.randint(0, a.vocab_size - 2, (a.batch, max(1, a.frames // 6)), device=device)
  lens = torch.full((a.batch,), a.frames, device=device)
  autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bfloat16")
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

  def step():
    with autocast:
      loss, _, _ = model(mel, text, lens=lens)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad()
    ema.update()
    return loss

  def forward():
    with torch.no_grad(), autocast:
      return model(mel, text, lens=lens)[0]

  def median_ms(fn, runs: int) -> float:
    for _ in range(3):
      fn()
    sync()
    times = []
    for _ in range(runs):
      start = time.perf_counter()
      fn()
      sync()
      times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3

  if device == "cuda":
    torch.cuda.reset_peak_memory_stats()
  row = {
    "framework": "f5-tts",
    "versions": f"torch {torch.__version__}, f5-tts {metadata.version('f5-tts')}",
    "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
    "dtype": dtype,
    "params_M": sum(p.numel() for p in dit.parameters()) / 1e6,
    "batch": a.batch,
    "frames": a.frames,
    "step_ms": median_ms(step, a.steps),
    "fwd_ms": median_ms(forward, a.steps),
  }
  if device == "cuda":
    row["mem_GiB"] = torch.cuda.max_memory_allocated() / 2**30
  print(json.dumps(row))
  if a.json:
    with open(a.json, "w") as f:
      json.dump([row], f, indent=1)
  return row


if __name__ == "__main__":
  main()
