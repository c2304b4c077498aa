"""Mesh rendering on tiny meshes (silhouette, shading, occlusion, culling), mp4 writing checked with
the ffmpeg binary, and the motion plot."""

import re
import subprocess

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

from jamflow_jax.motion import render
from jamflow_jax.motion.spec import MOTION_SPEC

LIGHT = np.array([0.3, 0.4, 1.0]) / np.linalg.norm([0.3, 0.4, 1.0])
COLOR = np.array([0.80, 0.76, 0.72])


def _cube():
  """The cube [-1, 1]^3, triangles counter-clockwise seen from outside."""
  corners = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], np.float64)
  quads = [[0, 1, 3, 2], [4, 6, 7, 5], [0, 4, 5, 1], [2, 3, 7, 6], [0, 2, 6, 4], [1, 5, 7, 3]]
  faces = []
  for a, b, c, d in quads:
    faces += [[a, b, c], [a, c, d]]
  faces = np.array(faces)
  normal = np.cross(corners[faces[:, 1]] - corners[faces[:, 0]], corners[faces[:, 2]] - corners[faces[:, 0]])
  assert np.all(np.sum(normal * corners[faces].mean(axis=1), axis=1) > 0)  # outward winding
  return corners, faces


def _expected_rgb(normal):
  normal = np.asarray(normal, np.float64) / np.linalg.norm(normal)
  lambert = 0.25 + 0.75 * max(float(normal @ LIGHT), 0.0)
  return np.round(np.round(lambert * 254) / 254 * COLOR * 255)


def test_cube_silhouette_and_shading():
  corners, faces = _cube()
  # size 64, margin 1/8: the 2-unit front face spans 48 pixels, columns and rows 8..55.
  frame = render.render_frames(corners, faces, size=64, margin=0.125)
  assert frame.shape == (1, 64, 64, 3) and frame.dtype == np.uint8
  lit = frame[0].any(axis=-1)
  assert lit[9:55, 9:55].all()
  outside = np.ones_like(lit)
  outside[7:57, 7:57] = False
  assert not lit[outside].any()
  # Only the front face (normal +z) shows: the sides are edge-on, the back is culled.
  np.testing.assert_array_equal(
    frame[0, 9:55, 9:55].reshape(-1, 3), np.broadcast_to(_expected_rgb([0, 0, 1]), (46 * 46, 3))
  )
  background = render.render_frames(corners, faces, size=64, margin=0.125, background=(10, 20, 30))
  np.testing.assert_array_equal(background[0, 0, 0], [10, 20, 30])


def test_view_is_fitted_to_the_first_frame():
  corners, faces = _cube()
  moved = corners + [0.25, 0.0, 0.0]  # 0.25 units = 6 pixels at this scale
  frames = render.render_frames(np.stack([corners, moved]), faces, size=64, margin=0.125)
  columns = [np.flatnonzero(f.any(axis=(0, 2))) for f in frames]
  assert columns[1][0] - columns[0][0] == 6 and columns[1][-1] - columns[0][-1] == 6


def _square(x0, x1, y0, y1, z, tilt=0.0):
  """Two counter-clockwise triangles facing +z (tilted about x by z += tilt * y)."""
  v = np.array([[x0, y0, z + tilt * y0], [x1, y0, z + tilt * y0], [x1, y1, z + tilt * y1], [x0, y1, z + tilt * y1]])
  return v, np.array([[0, 1, 2], [0, 2, 3]])


@pytest.mark.parametrize("near_first", [True, False])
def test_occlusion_does_not_depend_on_face_order(near_first):
  far_v, far_f = _square(-1, 1, -1, 1, z=0.0)
  near_v, near_f = _square(-0.4, 0.4, -0.4, 0.4, z=1.0, tilt=0.5)  # tilted: a different shade
  vertices = np.concatenate([far_v, near_v])
  faces = np.concatenate([far_f, near_f + 4])
  if near_first:
    faces = faces[::-1]
  frame = render.render_frames(vertices, faces, size=64, margin=0.0)[0]
  near_rgb = _expected_rgb(np.cross([1, 0, 0], [0, 1, 0.5]))
  far_rgb = _expected_rgb([0, 0, 1])
  assert not np.array_equal(near_rgb, far_rgb)
  np.testing.assert_array_equal(frame[32, 32], near_rgb)  # centre: the near square hides the far one
  np.testing.assert_array_equal(frame[5, 5], far_rgb)
  np.testing.assert_array_equal(frame[32, 5], far_rgb)


def test_back_faces_are_culled_unless_asked():
  v, f = _square(-1, 1, -1, 1, z=0.0)
  backwards = f[:, ::-1]
  assert not render.render_frames(v, backwards, size=32).any()
  shown = render.render_frames(v, backwards, size=32, cull_back_faces=False)[0]
  np.testing.assert_array_equal(shown[16, 16], _expected_rgb([0, 0, 1]))


def test_render_rejects_bad_input():
  corners, faces = _cube()
  with pytest.raises(ValueError, match=r"vertices must be \[T, V, 3\]"):
    render.render_frames(corners[:, :2], faces)
  with pytest.raises(ValueError, match="faces index vertices 0..7"):
    render.render_frames(corners, faces + 1)
  with pytest.raises(ValueError, match="no extent"):
    render.render_frames(np.zeros((1, 8, 3)), faces)


def _ffmpeg_info(path) -> str:
  # `ffmpeg -i FILE` without an output prints the streams, then exits 1 ("output file required").
  result = subprocess.run(
    [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True
  )
  return result.stderr


def _duration(info: str) -> float:
  h, m, s = re.search(r"Duration: (\d+):(\d+):([\d.]+)", info).groups()
  return 3600 * int(h) + 60 * int(m) + float(s)


def _decode(path, width, height) -> np.ndarray:
  raw = subprocess.run(
    [
      imageio_ffmpeg.get_ffmpeg_exe(),
      "-loglevel",
      "error",
      "-i",
      str(path),
      "-f",
      "rawvideo",
      "-pix_fmt",
      "rgb24",
      "pipe:1",
    ],
    capture_output=True,
    check=True,
  ).stdout
  return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


def _moving_frames(num_frames=50, height=64, width=96):
  """A bright square sweeping over a dark gradient (plain shapes: H.264 keeps them nearly exact)."""
  frames = np.zeros((num_frames, height, width, 3), np.uint8)
  frames[..., 2] = np.linspace(0, 120, width, dtype=np.uint8)
  for t in range(num_frames):
    x = t * (width - 16) // num_frames
    frames[t, 20:36, x : x + 16] = (230, 200, 40)
  return frames


def test_write_video_with_sound(tmp_path):
  frames = _moving_frames()
  seconds = 2.0
  wav = 0.3 * np.sin(2 * np.pi * 220 * np.arange(int(seconds * 24000)) / 24000)
  path = tmp_path / "clip.mp4"
  render.write_video(path, frames, fps=25, wav=wav, sample_rate=24000)
  info = _ffmpeg_info(path)
  video = re.search(r"Stream #.*Video: (.*)", info).group(1)
  assert video.startswith("h264") and "yuv420p" in video and "96x64" in video and "25 fps" in video
  assert re.search(r"Stream #.*Audio: aac", info)
  assert abs(_duration(info) - seconds) < 0.1
  decoded = _decode(path, 96, 64)
  assert decoded.shape == frames.shape
  assert np.mean(np.abs(decoded.astype(float) - frames)) < 6


def test_write_video_without_sound_and_odd_size(tmp_path):
  frames = _moving_frames(num_frames=10, height=33, width=47)
  path = tmp_path / "silent.mp4"
  render.write_video(path, frames, fps=25)
  info = _ffmpeg_info(path)
  assert "Audio:" not in info
  assert re.search(r"Video: h264.*48x34", info)  # padded to even sizes for yuv420p
  assert _decode(path, 48, 34).shape[0] == 10


def test_write_video_errors(tmp_path):
  with pytest.raises(ValueError, match=r"uint8 \[T, H, W, 3\]"):
    render.write_video(tmp_path / "x.mp4", np.zeros((2, 8, 8, 3), np.float32))
  with pytest.raises(RuntimeError, match=r"ffmpeg exited with [1-9][\s\S]*missing_dir"):
    render.write_video(tmp_path / "missing_dir" / "x.mp4", np.zeros((2, 8, 8, 3), np.uint8))


@pytest.mark.parametrize("with_wav", [True, False])
def test_plot_motion_writes_png(tmp_path, with_wav):
  frames = 75
  t = np.arange(frames) / 25
  motion = MOTION_SPEC.join(
    {
      "jaw": np.stack([0.2 * np.abs(np.sin(3 * t)), 0 * t, 0 * t], -1),
      "expression": 0.5 * np.sin(t[:, None] + np.arange(50)),
      "eyelids": np.zeros((frames, 2)),
    },
    frames,
  )
  wav = np.sin(2 * np.pi * 200 * np.arange(3 * 24000) / 24000) * np.abs(np.sin(3 * np.arange(3 * 24000) / 24000))
  path = tmp_path / "motion.png"
  render.plot_motion(path, motion, wav=wav if with_wav else None)
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  with Image.open(path) as image:
    assert image.size[0] >= 800 and image.size[1] >= 300


def test_command_line_renders_the_stand_in_face_speaking(tmp_path):
  import os
  import sys

  from jamflow_jax.audio.wav import write_wav

  frames = 50
  motion = np.zeros((frames, MOTION_SPEC.dim), np.float32)
  motion[:, MOTION_SPEC.slice("jaw").start] = 0.15 * (1 + np.sin(np.arange(frames) / 3))  # the jaw opens and closes
  np.savez(tmp_path / "talk.npz", motion=motion, fps=25.0)
  write_wav(tmp_path / "talk.wav", 0.2 * np.sin(np.arange(48000) * 0.05), 24000)
  done = subprocess.run(
    [
      sys.executable,
      "-m",
      "jamflow_jax.motion.render",
      f"--motion={tmp_path / 'talk.npz'}",
      f"--audio={tmp_path / 'talk.wav'}",
      "--size=96",
      "--plot",
    ],
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )
  assert done.returncode == 0, done.stderr[-2000:]
  info = _ffmpeg_info(tmp_path / "talk.mp4")
  assert "Video: h264" in info and "Audio: aac" in info and abs(_duration(info) - 2.0) < 0.1
  assert (tmp_path / "talk.png").exists()
  video = _decode(tmp_path / "talk.mp4", 96, 96)
  assert video.shape[0] == frames and np.abs(np.diff(video.astype(float), axis=0)).mean() > 0.1  # it moves
