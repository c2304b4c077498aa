"""Rotation conversions, tracker readers and the real-corpus preprocessing entry point."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile
from scipy.spatial.transform import Rotation

from data_pipelines import preprocess, shards
from jamflow_jax.motion import rotations, trackers
from jamflow_jax.motion.spec import MOTION_SPEC, motion_frames_for

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SL = {name: MOTION_SPEC.slice(name) for name in MOTION_SPEC.names}


def _random_axis_angle(rng, n):
  axis = rng.normal(size=(n, 3))
  return axis / np.linalg.norm(axis, axis=-1, keepdims=True) * rng.uniform(0, np.pi, size=(n, 1))


# ----------------------------------------------------------------------------- rotations


def test_ninety_degrees_about_x():
  aa = np.array([np.pi / 2, 0.0, 0.0])
  r = rotations.axis_angle_to_matrix(aa)
  np.testing.assert_allclose(r, [[1, 0, 0], [0, 0, -1], [0, 1, 0]], atol=1e-15)
  np.testing.assert_allclose(r @ [0, 1, 0], [0, 0, 1], atol=1e-15)  # y turns to z: right-handed
  np.testing.assert_allclose(rotations.axis_angle_to_quaternion(aa), [np.sqrt(0.5), np.sqrt(0.5), 0, 0])
  np.testing.assert_allclose(rotations.matrix_to_axis_angle(r), aa, atol=1e-15)
  # 6D = first two rows (PyTorch3D); rows need not be orthonormal on the way in.
  np.testing.assert_allclose(rotations.matrix_to_rotation_6d(r), [1, 0, 0, 0, 0, -1], atol=1e-15)
  np.testing.assert_allclose(rotations.rotation_6d_to_axis_angle(np.array([2.0, 0, 0, 1, 0, -3])), aa, atol=1e-15)


def test_near_zero_keeps_precision():
  aa = np.array([[1e-9, -2e-9, 3e-9], [0.0, 0.0, 0.0], [2e-7, 0.0, 0.0]])
  r = rotations.axis_angle_to_matrix(aa)
  np.testing.assert_allclose(r[0], np.eye(3) + rotations._skew(aa[0]), atol=1e-17)
  np.testing.assert_allclose(rotations.matrix_to_axis_angle(r), aa, rtol=1e-6, atol=1e-17)
  np.testing.assert_allclose(
    rotations.quaternion_to_axis_angle(rotations.axis_angle_to_quaternion(aa)), aa, rtol=1e-9, atol=1e-20
  )


def test_near_pi():
  axis = np.array([1.0, 1.0, 0.0]) / np.sqrt(2)
  exact = rotations.matrix_to_axis_angle(2 * np.outer(axis, axis) - np.eye(3))  # 180 degrees about axis
  assert np.isclose(np.linalg.norm(exact), np.pi)
  np.testing.assert_allclose(np.abs(exact @ axis), np.pi, atol=1e-12)  # +axis or -axis: same rotation
  for angle in (np.pi - 1e-7, np.pi - 1e-3):
    aa = angle * axis
    back = rotations.matrix_to_axis_angle(rotations.axis_angle_to_matrix(aa))
    np.testing.assert_allclose(back, aa, atol=1e-9)


def test_round_trips_and_scipy_agree():
  aa = _random_axis_angle(np.random.default_rng(0), 500)
  r = rotations.axis_angle_to_matrix(aa)
  np.testing.assert_allclose(r, Rotation.from_rotvec(aa).as_matrix(), atol=1e-12)
  np.testing.assert_allclose(rotations.matrix_to_axis_angle(r), aa, atol=1e-10)
  d6 = rotations.matrix_to_rotation_6d(r)
  np.testing.assert_allclose(rotations.rotation_6d_to_matrix(d6), r, atol=1e-12)
  q = rotations.matrix_to_quaternion(r)
  np.testing.assert_allclose(rotations.quaternion_to_matrix(q), r, atol=1e-12)
  np.testing.assert_allclose(q, rotations.axis_angle_to_quaternion(aa), atol=1e-12)
  assert r.reshape(5, 100, 3, 3).shape == rotations.axis_angle_to_matrix(aa.reshape(5, 100, 3)).shape


def test_slerp_resampling_of_constant_velocity_rotation():
  axis = np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8])
  omega = 4.0  # rad/s: passes pi within the clip, where axis-angle flips and linear interpolation fails
  src = (omega * np.arange(30) / 30)[:, None] * axis  # 1 s at 30 fps
  out = rotations.resample_rotations(src, 30, 25)
  assert out.shape == (25, 3)
  want = Rotation.from_rotvec((omega * np.arange(25) / 25)[:, None] * axis).as_matrix()
  np.testing.assert_allclose(rotations.axis_angle_to_matrix(out), want, atol=1e-12)


def test_linear_resampling_and_frame_placement():
  ramp = np.arange(60, dtype=np.float64)[:, None] / 60  # value = time in s, 60 fps
  out = rotations.resample_linear(ramp, 60, 25)
  np.testing.assert_allclose(out[:, 0], np.arange(25) / 25, atol=1e-12)
  i0, frac = rotations.resample_positions(10, 20, 25)  # upsampling holds the last frame at the end
  assert i0.shape == (12,) and i0.max() <= 8 and np.all((frac >= 0) & (frac <= 1))


# ----------------------------------------------------------------------------- trackers


def _save(path, **arrays):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  np.savez(path, **arrays)
  return path


def test_emoca_pose_layout(tmp_path):
  rng = np.random.default_rng(1)
  exp, pose = rng.normal(size=(12, 50)), rng.normal(size=(12, 6)) * 0.3
  track = trackers.read_track(
    _save(tmp_path / "a.npz", exp=exp, pose=pose, shape=rng.normal(size=(12, 100)), cam=rng.normal(size=(12, 3)))
  )
  assert track.format == "emoca" and track.fps is None and track.motion.shape == (12, 61)
  np.testing.assert_allclose(track.motion[:, SL["expression"]], exp, rtol=1e-6)
  np.testing.assert_allclose(track.motion[:, SL["global_rot"]], pose[:, :3], rtol=1e-6)
  np.testing.assert_allclose(track.motion[:, SL["jaw"]], pose[:, 3:], rtol=1e-6)
  assert not track.motion[:, SL["neck"]].any() and not track.motion[:, SL["eyelids"]].any()
  assert "neck: absent, zeros" in track.notes


def test_emoca_family_variants(tmp_path):
  rng = np.random.default_rng(2)
  jaw_aa = _random_axis_angle(rng, 8) * 0.3
  jaw_6d = rotations.matrix_to_rotation_6d(rotations.axis_angle_to_matrix(jaw_aa))
  # An explicit 6D jaw wins over the jaw half of `pose`; a short expression vector is zero-padded.
  track = trackers.read_track(
    _save(
      tmp_path / "b.npz", expcode=rng.normal(size=(8, 1, 30)), posecode=np.zeros((8, 6)), jaw=jaw_6d, fps=np.array(30.0)
    )
  )
  np.testing.assert_allclose(track.motion[:, SL["jaw"]], jaw_aa, atol=1e-6)
  assert track.fps == 30.0 and not track.motion[:, 30:50].any()
  assert any("zero-padded" in note for note in track.notes)
  # SMIRK's encoder outputs.
  smirk = {
    "expression_params": rng.normal(size=(8, 50)),
    "jaw_params": jaw_aa,
    "pose_params": jaw_aa[::-1].copy(),
    "eyelid_params": rng.uniform(size=(8, 2)),
    "shape_params": rng.normal(size=(8, 300)),
  }
  track = trackers.read_track(_save(tmp_path / "c.npz", **smirk))
  np.testing.assert_allclose(track.motion[:, SL["jaw"]], jaw_aa, rtol=1e-6)
  np.testing.assert_allclose(track.motion[:, SL["global_rot"]], smirk["pose_params"], rtol=1e-6)
  np.testing.assert_allclose(track.motion[:, SL["eyelids"]], smirk["eyelid_params"], rtol=1e-6)


def test_vhap_layout(tmp_path):
  rng = np.random.default_rng(3)
  t = 10
  params = {
    "rotation": rng.normal(size=(t, 3)) * 0.2,
    "neck_pose": rng.normal(size=(t, 3)) * 0.2,
    "jaw_pose": rng.normal(size=(t, 3)) * 0.2,
    "expr": rng.normal(size=(t, 100)),
    "eyes_pose": rng.normal(size=(t, 6)),
    "translation": rng.normal(size=(t, 3)),
    "shape": rng.normal(size=300),
    "static_offset": rng.normal(size=(1, 20, 3)),
    "timestep_id": np.array([f"{i:05d}" for i in range(t)]),
    "n_processed_frames": np.array(t),
  }
  track = trackers.read_track(_save(tmp_path / "s" / "tracked_flame_params.npz", **params))
  assert track.format == "vhap" and track.fps is None
  np.testing.assert_allclose(track.motion[:, SL["expression"]], params["expr"][:, :50], rtol=1e-6)
  for name, key in (("jaw", "jaw_pose"), ("neck", "neck_pose"), ("global_rot", "rotation")):
    np.testing.assert_allclose(track.motion[:, SL[name]], params[key], rtol=1e-6)
  assert "expr: first 50 of 100 components kept" in track.notes


def test_jamflow_layout_and_fps_conversion(tmp_path):
  rng = np.random.default_rng(4)
  motion = rng.normal(size=(60, 61)) * 0.1
  motion[:, SL["expression"]] = np.arange(60)[:, None] / 60  # linear in time
  path = _save(tmp_path / "j.npz", motion=motion, fps=np.array(60))
  out, track = trackers.load_motion(path, default_fps=10.0)  # the file's rate wins
  assert track.format == "jamflow" and track.fps == 60 and out.shape == (25, 61) and out.dtype == np.float32
  np.testing.assert_allclose(out[:, 0], np.arange(25) / 25, atol=1e-6)
  np.testing.assert_allclose(out[:, SL["jaw"]], rotations.resample_rotations(motion[:, SL["jaw"]], 60, 25), atol=1e-6)


def test_tracker_errors_name_file_and_key(tmp_path):
  exp = np.zeros((5, 50))
  bad_jaw = np.zeros((5, 3))
  bad_jaw[2, 1] = np.nan
  with pytest.raises(trackers.TrackError, match=r"n\.npz: key 'jaw' has NaN/inf at frame 2"):
    trackers.read_track(_save(tmp_path / "n.npz", exp=exp, jaw=bad_jaw))
  with pytest.raises(trackers.TrackError, match=r"key 'pose' has shape \(5, 4\)"):
    trackers.read_track(_save(tmp_path / "p.npz", exp=exp, pose=np.zeros((5, 4))))
  with pytest.raises(trackers.TrackError, match="disagree on the number of frames"):
    trackers.read_track(_save(tmp_path / "l.npz", exp=exp, jaw=np.zeros((4, 3))))
  with pytest.raises(trackers.TrackError, match="cannot tell the tracker format"):
    trackers.read_track(_save(tmp_path / "u.npz", foo=exp))
  with pytest.raises(trackers.TrackError, match="cannot read"):
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    trackers.read_track(tmp_path / "broken.npz")
  with pytest.raises(trackers.MissingFrameRateError, match="--motion_fps"):
    trackers.load_motion(_save(tmp_path / "ok.npz", exp=exp))


# ----------------------------------------------------------------------------- preprocess


def _tone(path, seconds, sr, channels=1):
  t = np.arange(int(seconds * sr)) / sr
  wav = 0.3 * np.sin(2 * np.pi * 220 * t)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  soundfile.write(path, np.stack([wav] * channels, -1) if channels > 1 else wav, sr)


def _jaw_track(seconds, fps):
  """EMOCA-style track whose jaw opens linearly with time (angle = 0.2 * t rad about x)."""
  t = np.arange(round(seconds * fps)) / fps
  pose = np.zeros((t.shape[0], 6))
  pose[:, 3] = 0.2 * t
  return {"exp": np.ones((t.shape[0], 50)) * 0.1, "pose": pose}


@pytest.fixture
def raw_corpus(tmp_path):
  audio, motion = tmp_path / "audio", tmp_path / "motion"
  _tone(f"{audio}/spk1/a.wav", 1.2, 16000)
  _save(f"{motion}/spk1/a.npz", **_jaw_track(1.2, 30))  # 30 fps, rate given by --motion_fps
  _tone(f"{audio}/spk1/b.flac", 1.0, 44100, channels=2)
  _save(f"{motion}/spk1/b.npz", motion=np.full((25, 61), 0.05), fps=np.array(25.0))
  _tone(f"{audio}/spk2/c.wav", 1.1, 16000)
  vhap = {
    "rotation": np.zeros((33, 3)),
    "neck_pose": np.zeros((33, 3)),
    "jaw_pose": np.full((33, 3), 0.1),
    "expr": np.zeros((33, 100)),
    "shape": np.zeros(300),
  }
  _save(f"{motion}/spk2/c/tracked_flame_params.npz", **vhap)
  _save(f"{motion}/spk2/c/flame_param/00000.npz", expr=np.zeros((1, 100)))  # a VHAP export, not an utterance
  _tone(f"{audio}/spk2/d.wav", 1.0, 16000)  # no motion
  _tone(f"{audio}/spk2/e.wav", 1.0, 16000)  # empty transcript
  _save(f"{motion}/spk2/e.npz", **_jaw_track(1.0, 30))
  _tone(f"{audio}/spk2/f.wav", 0.3, 16000)  # too short
  _save(f"{motion}/spk2/f.npz", **_jaw_track(0.3, 30))
  _tone(f"{audio}/spk2/g.wav", 1.0, 16000)  # characters outside the vocabulary
  _save(f"{motion}/spk2/g.npz", **_jaw_track(1.0, 30))
  _tone(f"{audio}/spk2/i.wav", 1.0, 16000)  # twice as much motion as audio
  _save(f"{motion}/spk2/i.npz", **_jaw_track(2.0, 30))
  _save(f"{motion}/spk3/h.npz", **_jaw_track(1.0, 30))  # no audio
  (audio / "spk1" / "a.txt").write_text("Hello \u201cworld\u201d.\n")
  (audio / "spk2" / "e.lab").write_text("  \n")
  tsv = tmp_path / "transcripts.tsv"
  tsv.write_text(
    "spk1/b\tSecond one.\nspk2/c\tThird one.\nspk2/d\tNo motion.\nspk2/f\tShort.\n"
    "spk2/g\t\u65e5\u672c\u8a9e\nspk2/i\tToo long a track.\n\nspk3/h\tNo audio.\n"
  )
  return tmp_path


def test_preprocess_end_to_end(raw_corpus):
  out = raw_corpus / "corpus"
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "data_pipelines.preprocess",
      f"--out={out}",
      f"--audio_dir={raw_corpus / 'audio'}",
      f"--motion_dir={raw_corpus / 'motion'}",
      f"--transcripts={raw_corpus / 'transcripts.tsv'}",
      "--motion_fps=30",
      "--validation_fraction=0.3",
      "--records_per_shard=2",
    ],
    check=False,
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 0, result.stderr
  assert "skipped" in result.stdout and "preprocess_report.json" in result.stdout
  report = json.loads((out / preprocess.REPORT_FILE).read_text())
  assert report["skipped"] == {
    "bad_transcript": 1,
    "empty_transcript": 1,
    "length_mismatch": 1,
    "missing_audio": 1,
    "missing_motion": 1,
    "too_short": 1,
  }
  assert {p["id"] for p in report["problems"]} == {"spk2/d", "spk2/e", "spk2/f", "spk2/g", "spk2/i", "spk3/h"}
  assert sum(report["written"].values()) == 3
  assert report["motion_formats"] == {"emoca": 1, "jamflow": 1, "vhap": 1}

  corpus = shards.Corpus(out)
  assert corpus.metadata["source"]["skipped"] == report["skipped"]
  records = {}
  for name in sorted(os.listdir(out)):
    if name.endswith(".array_record"):
      records.update({r["id"]: r for r in shards.read_records(out / name)})
  assert sorted(records) == ["spk1/a", "spk1/b", "spk2/c"]
  assert sum(len(corpus.split(s)) for s in corpus.splits) == 3
  a = records["spk1/a"]
  assert a["speaker"] == "spk1" and a["text"] == 'Hello "world".'
  assert a["mel"].shape == (1 + 1.2 * 24000 // 256, 100)
  assert a["motion"].shape == (motion_frames_for(a["mel"].shape[0]), 61)
  # The 30 fps jaw ramp arrives on the 25 fps clock: angle 0.2 * j / 25 about x.
  np.testing.assert_allclose(a["motion"][:25, SL["jaw"]][:, 0], 0.2 * np.arange(25) / 25, atol=1e-6)
  c = records["spk2/c"]
  assert c["speaker"] == "spk2" and np.allclose(c["motion"][:, SL["jaw"]], 0.1)


def test_preprocess_needs_a_frame_rate(raw_corpus):
  with pytest.raises(trackers.MissingFrameRateError, match=r"a\.npz.*--motion_fps"):
    preprocess.preprocess(
      str(raw_corpus / "out"),
      str(raw_corpus / "audio"),
      str(raw_corpus / "motion"),
      transcripts=str(raw_corpus / "transcripts.tsv"),
      progress=False,
    )
  (raw_corpus / "used").mkdir()
  (raw_corpus / "used" / "train-00000.array_record").write_bytes(b"")
  with pytest.raises(ValueError, match="already holds a corpus"):
    preprocess.preprocess(
      str(raw_corpus / "used"), str(raw_corpus / "audio"), str(raw_corpus / "motion"), motion_fps=30, progress=False
    )


def test_split_and_speaker_rules():
  assert preprocess.speaker_of("M003/level_1/001", "from_dir") == "M003"
  assert preprocess.speaker_of("x/M003_angry_001", "from_prefix:_") == "M003"
  assert preprocess.speaker_of("loose", "from_dir") is None
  assert preprocess.speaker_of("loose", "Anna") == "Anna"
  splits = [preprocess.split_of(f"u{i}", 0, 0.2) for i in range(2000)]
  assert 0.17 < splits.count("validation") / 2000 < 0.23
  assert splits == [preprocess.split_of(f"u{i}", 0, 0.2) for i in range(2000)]
  assert preprocess.split_of("u1", 0, 0.0) == "train"
  motion = np.arange(20, dtype=np.float32)[:, None] * np.ones((1, 61), np.float32)
  padded, diff = preprocess.reconcile_length(motion, 22)
  assert diff == -2 and padded.shape == (22, 61) and padded[-1, 0] == 19
  with pytest.raises(preprocess.Skip, match="length_mismatch"):
    preprocess.reconcile_length(motion, 30)
