"""What a task returns, and the files it writes."""

import dataclasses
import json
import os

import numpy as np

from jamflow_jax import paths as paths_lib
from jamflow_jax.audio import wav as wav_lib
from jamflow_jax.motion import render
from jamflow_jax.motion.spec import MotionSpec


@dataclasses.dataclass
class Result:
  """One task's output. mel [Ta, 100] log mel; wav [N] float32 at 24 kHz; motion [Tm, D] FLAME
  parameters at 25 fps, un-normalised (None when the task has no motion); info: what was run.

  Motion files (`save`): `motion` float32 [T, D] in the layout of `jamflow_jax.motion.spec`
  (`expression[50] | jaw[3] | neck[3] | global_rot[3] | eyelids[2]`, axis-angle), each part also
  under its own name, and `fps`.
  """

  mel: np.ndarray
  wav: np.ndarray
  motion: np.ndarray | None
  info: dict
  spec: MotionSpec
  sample_rate: int

  def save(self, directory: str | os.PathLike, name: str, *, face=None, size: int = 256) -> dict[str, str]:
    """Writes NAME.wav, NAME.npz (when there is motion), NAME.mp4 (when there is motion and a `face`,
    a FLAME-format model, to show it on) and NAME.json into `directory` (local or a gs:// URL);
    returns their paths."""
    directory = paths_lib.workdir_path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    out = {"wav": directory / f"{name}.wav"}
    with paths_lib.local_file(out["wav"]) as f:
      wav_lib.write_wav(f, self.wav, self.sample_rate)
    if self.motion is not None:
      out["npz"] = directory / f"{name}.npz"
      with paths_lib.local_file(out["npz"]) as f:
        np.savez(
          f,
          motion=self.motion.astype(np.float32),
          fps=np.float32(self.spec.fps),
          **{k: v.astype(np.float32) for k, v in self.spec.split(self.motion).items()},
        )
      if face is not None:
        out["mp4"] = directory / f"{name}.mp4"
        with paths_lib.local_file(out["mp4"]) as f:
          render.write_face_video(
            f, face, self.motion, wav=self.wav, sample_rate=self.sample_rate, fps=self.spec.fps, size=size
          )
    out["json"] = directory / f"{name}.json"
    out["json"].write_text(json.dumps({**self.info, "outputs": {k: v.name for k, v in out.items()}}, indent=1))
    return {k: os.fspath(v) for k, v in out.items()}
