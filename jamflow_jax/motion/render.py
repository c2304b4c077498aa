"""Looking at motion: shaded mesh frames, mp4 files with sound, and plots of the motion channels.

Nothing here knows about FLAME: `render_frames` takes any triangle mesh sequence (vertices
[T, V, 3], faces [F, 3]), so the output of `jamflow_jax.motion.flame` or any other face model can
be rendered. Coordinates follow FLAME's convention: x right, y up, z towards the viewer.

The renderer is a CPU painter's algorithm with PIL: an orthographic front view fitted once to the
first frame, back faces culled, flat Lambert shading with one fixed light, triangles drawn far to
near. For meshes of many small triangles (a face model) sorting whole triangles by their mean depth
resolves occlusion correctly; large triangles that interpenetrate would need a z-buffer.
Videos go through the ffmpeg binary that `imageio_ffmpeg` ships (H.264 / yuv420p, AAC sound).
"""

import math
import os
import pickle
import subprocess
import tempfile

import imageio_ffmpeg
import numpy as np
from PIL import Image, ImageDraw

from jamflow_jax.audio import wav as wav_lib
from jamflow_jax.audio.loudness import frame_rms
from jamflow_jax.motion import face as face_lib, flame, trackers
from jamflow_jax.motion.spec import EXPRESSION_COMPONENTS, MOTION_SPEC, MotionSpec


def _normalised(v) -> np.ndarray:
  v = np.asarray(v, np.float64)
  return v / np.linalg.norm(v)


def render_frames(
  vertices,
  faces,
  *,
  size: int = 256,
  margin: float = 0.08,
  color=(0.80, 0.76, 0.72),
  background=(0, 0, 0),
  light=(0.3, 0.4, 1.0),
  ambient: float = 0.25,
  cull_back_faces: bool = True,
) -> np.ndarray:
  """Renders a mesh sequence seen from the front -> uint8 [T, size, size, 3].

  vertices: [T, V, 3] (or one frame [V, 3]); faces: int [F, 3], counter-clockwise seen from
  outside (the usual OBJ / FLAME winding), so a face points at the viewer when its normal has z > 0.
  The orthographic view maps the x-y bounding box of the first frame's used vertices to the frame
  minus `margin` (a fraction of `size`) on each side and stays fixed over the clip, so head motion
  shows as motion. Shading per face: `color * (ambient + (1 - ambient) * max(0, n . light))` with
  n the face normal turned towards the viewer; `color` is RGB in 0..1, `background` RGB in 0..255.
  `cull_back_faces=False` draws faces seen from behind too (for meshes with mixed winding).
  """
  vertices = np.asarray(vertices, np.float64)
  if vertices.ndim == 2:
    vertices = vertices[None]
  faces = np.asarray(faces)
  if vertices.ndim != 3 or vertices.shape[-1] != 3 or vertices.shape[0] == 0:
    raise ValueError(f"vertices must be [T, V, 3] with T >= 1, got shape {vertices.shape}")
  if faces.ndim != 2 or faces.shape[1] != 3 or not np.issubdtype(faces.dtype, np.integer):
    raise ValueError(f"faces must be integer [F, 3], got shape {faces.shape} dtype {faces.dtype}")
  if faces.size and (faces.min() < 0 or faces.max() >= vertices.shape[1]):
    raise ValueError(f"faces index vertices 0..{vertices.shape[1] - 1}, found {faces.min()}..{faces.max()}")
  if not np.all(np.isfinite(vertices)):
    raise ValueError("vertices contain NaN or inf")

  first = vertices[0, np.unique(faces)] if faces.size else vertices[0]
  low, high = first[:, :2].min(axis=0), first[:, :2].max(axis=0)
  extent = float(np.max(high - low))
  if extent <= 0:
    raise ValueError("the first frame's mesh has no extent in x or y; nothing to fit the view to")
  scale = size * (1.0 - 2.0 * margin) / extent
  centre = (low + high) / 2

  light = _normalised(light)
  # Shade values 1..255 index a colour table; 0 stays the background.
  table = np.empty((256, 3), np.uint8)
  table[0] = background
  table[1:] = np.round(np.outer(np.linspace(0.0, 1.0, 255), np.asarray(color, np.float64) * 255))

  shade_images = np.empty((vertices.shape[0], size, size), np.uint8)
  for t, frame in enumerate(vertices):
    tri = frame[faces]  # [F, 3 corners, 3]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    length = np.linalg.norm(normal, axis=-1)
    keep = length > 0
    if cull_back_faces:
      keep &= normal[:, 2] > 0
    normal = normal[keep] / length[keep, None]
    normal *= np.where(normal[:, 2] < 0, -1.0, 1.0)[:, None]  # the side the viewer sees
    lambert = ambient + (1.0 - ambient) * np.maximum(normal @ light, 0.0)
    shade = 1 + np.round(np.clip(lambert, 0.0, 1.0) * 254).astype(np.int64)
    tri = tri[keep]
    order = np.argsort(tri[:, :, 2].mean(axis=1), kind="stable")  # far (small z) first
    screen = np.empty(tri.shape[:2] + (2,))
    screen[..., 0] = (tri[..., 0] - centre[0]) * scale + size / 2
    screen[..., 1] = size / 2 - (tri[..., 1] - centre[1]) * scale  # image rows grow downwards
    image = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(image)
    for xy, value in zip(screen[order].reshape(-1, 6).tolist(), shade[order].tolist()):
      draw.polygon(xy, fill=value)
    shade_images[t] = np.asarray(image)
  return table[shade_images]


def _ffmpeg_error(command: list[str], result: subprocess.CompletedProcess, path) -> RuntimeError:
  tail = result.stderr.decode("utf-8", "replace").strip().splitlines()[-15:]
  return RuntimeError(
    f"ffmpeg exited with {result.returncode} writing {os.fspath(path)}\n"
    f"command: {' '.join(command)}\n" + "\n".join(tail)
  )


def write_video(path: str | os.PathLike, frames, fps: float = 25.0, wav=None, sample_rate: int = 24000) -> None:
  """Writes frames uint8 [T, H, W, 3] (RGB) as an mp4: H.264, yuv420p, `fps` frames per second.

  wav: optional mono float audio [N] (-1..1) at `sample_rate`, muxed as AAC; it is not trimmed or
  padded, so give T / fps seconds of it for streams of equal length. Odd frame sizes are padded by
  one pixel (yuv420p needs even sizes). Raises RuntimeError with ffmpeg's stderr if it fails.
  """
  frames = np.asarray(frames)
  if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
    raise ValueError(f"frames must be uint8 [T, H, W, 3] with T >= 1, got {frames.dtype} {frames.shape}")
  if wav is not None:
    wav = np.asarray(wav, np.float32)
    if wav.ndim != 1 or wav.size == 0:
      raise ValueError(f"wav must be mono audio [N] with N >= 1, got shape {wav.shape}")
  _, height, width, _ = frames.shape
  ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
  with tempfile.TemporaryDirectory() as tmp:
    command = [
      ffmpeg,
      "-y",
      "-hide_banner",
      "-loglevel",
      "error",
      "-f",
      "rawvideo",
      "-pix_fmt",
      "rgb24",
      "-s",
      f"{width}x{height}",
      "-framerate",
      f"{fps:g}",
      "-i",
      "pipe:0",
    ]
    if wav is not None:
      audio_path = os.path.join(tmp, "audio.wav")
      wav_lib.write_wav(audio_path, wav, sample_rate)
      command += ["-i", audio_path, "-c:a", "aac", "-b:a", "128k"]
    command += [
      "-vf",
      "pad=ceil(iw/2)*2:ceil(ih/2)*2",
      "-c:v",
      "libx264",
      "-pix_fmt",
      "yuv420p",
      "-movflags",
      "+faststart",
      os.fspath(path),
    ]
    # communicate() feeds stdin while draining stderr, so a chatty ffmpeg cannot deadlock the pipe.
    result = subprocess.run(command, input=np.ascontiguousarray(frames).tobytes(), capture_output=True)
  if result.returncode != 0:
    raise _ffmpeg_error(command, result, path)


def plot_motion(
  path: str | os.PathLike, motion, wav=None, sample_rate: int = 24000, fps: float = 25.0, spec: MotionSpec = MOTION_SPEC
) -> None:
  """Writes a PNG of the main motion channels of motion [T, D] over time (seconds).

  Panels: jaw opening (jaw axis-angle x, radians), expression components 0-5 under their
  `EXPRESSION_COMPONENTS` names, eyelids. With `wav` ([N] at `sample_rate`), a top panel shows its
  RMS envelope per motion frame (`jamflow_jax.audio.loudness.frame_rms`), and every motion panel
  carries it as a grey backdrop on the same time axis, so mouth movement can be checked against
  speech.
  """
  # Figure + Agg canvas directly: no pyplot, so no global backend state and no GUI.
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  motion = np.asarray(motion, np.float64)
  if motion.ndim != 2 or motion.shape[0] == 0:
    raise ValueError(f"motion must be [T, {spec.dim}] with T >= 1, got shape {motion.shape}")
  parts = spec.split(motion)
  time = np.arange(motion.shape[0]) / fps
  envelope = None
  if wav is not None:
    wav = np.asarray(wav, np.float64)
    envelope = frame_rms(wav, sample_rate, fps=fps, num_frames=math.ceil(wav.size * fps / sample_rate))

  names = {index: name for name, index in EXPRESSION_COMPONENTS.items()}
  panels = [
    ("jaw opening (rad)", [("jaw x", parts["jaw"][:, 0])]),
    ("expression", [(names.get(i, f"expression {i}"), parts["expression"][:, i]) for i in range(6)]),
    ("eyelids", [(f"eyelid {i}", parts["eyelids"][:, i]) for i in range(parts["eyelids"].shape[1])]),
  ]
  rows = len(panels) + (envelope is not None)
  figure = Figure(figsize=(12, 2.2 * rows), layout="constrained")
  FigureCanvasAgg(figure)
  axes = figure.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
  if envelope is not None:
    env_time = np.arange(envelope.size) / fps
    axes[0].fill_between(env_time, envelope, color="0.4")
    axes[0].set_ylabel("audio RMS")
  for ax, (label, lines) in zip(axes[rows - len(panels) :], panels):
    if envelope is not None:
      backdrop = ax.twinx()
      backdrop.fill_between(env_time, envelope, color="0.85", zorder=0)
      backdrop.set_yticks([])
      ax.set_zorder(backdrop.get_zorder() + 1)
      ax.patch.set_visible(False)  # let the backdrop show through
    for name, values in lines:
      ax.plot(time, values, label=name, linewidth=1.2)
    ax.set_ylabel(label)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")  # outside: curves stay visible
  axes[-1].set_xlabel("time (s)")
  figure.savefig(os.fspath(path), dpi=100)


def face_frames(face, motion, *, size: int = 256) -> np.ndarray:
  """A FLAME-format face (`jamflow_jax.motion.flame.FlameModel`) posed by motion [T, D] -> uint8 frames."""
  return render_frames(np.asarray(flame.flame_vertices(face, motion)), np.asarray(face.faces), size=size)


def write_face_video(
  path: str | os.PathLike, face, motion, wav=None, sample_rate: int = 24000, fps: float = 25.0, size: int = 256
) -> None:
  """The face speaking: motion [T, D] at `fps` with `wav` (cut or padded with silence to T / fps s)."""
  frames = face_frames(face, motion, size=size)
  if wav is not None:
    samples = round(frames.shape[0] / fps * sample_rate)
    wav = np.pad(np.asarray(wav, np.float32)[:samples], (0, max(0, samples - len(wav))))
  write_video(path, frames, fps=fps, wav=wav, sample_rate=sample_rate)


def main(argv) -> None:
  """python -m jamflow_jax.motion.render --motion=X.npz [--audio=X.wav] [--out=X.mp4] [--plot]"""
  from absl import flags

  f = flags.FLAGS
  if len(argv) > 1:
    raise SystemExit(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    motion, _ = trackers.load_motion(f.motion, default_fps=MOTION_SPEC.fps)
    wav, rate = (None, 24000) if not f.audio else wav_lib.load_wav(f.audio)
    face = face_lib.load_face(f.face_model)
  except (OSError, ValueError, pickle.UnpicklingError) as e:  # names the file; unsafe pickles are never run
    raise SystemExit(f"input error: {e}") from None
  out = f.out or os.path.splitext(f.motion)[0] + ".mp4"
  write_face_video(out, face, motion, wav=wav, sample_rate=rate, size=f.size)
  print(out)
  if f.plot:
    plot_motion(os.path.splitext(out)[0] + ".png", motion, wav=wav, sample_rate=rate)
    print(os.path.splitext(out)[0] + ".png")


if __name__ == "__main__":
  from absl import app, flags

  flags.DEFINE_string("motion", None, "motion npz (ours or any tracker format jamflow_jax.motion.trackers reads)")
  flags.DEFINE_string("audio", None, "wav to put under the video")
  flags.DEFINE_string("out", None, "mp4 path (default: the motion file's, .mp4)")
  flags.DEFINE_string("face_model", "", "FLAME .pkl / .npz; empty = the stand-in face")
  flags.DEFINE_integer("size", 256, "frame size in pixels")
  flags.DEFINE_bool("plot", False, "also write a PNG of the motion channels against the audio envelope")
  flags.mark_flag_as_required("motion")
  app.run(main)
