"""jamflow_jax: JAM-Flow (joint speech + facial motion flow matching) in JAX / Flax NNX."""

from setuptools import find_packages, setup

setup(
  name="jamflow_jax",
  version="0.1.0",
  description="JAM-Flow: joint audio-motion flow matching (MM-DiT) in JAX/Flax, TPU pods to one CPU",
  long_description=open("README.md", encoding="utf-8").read(),
  long_description_content_type="text/markdown",
  python_requires=">=3.11",
  # benchmarks, launch: `python -m benchmarks.NAME` and `python launch/tpu_compile.py` find each other.
  packages=find_packages(
    include=["jamflow_jax", "jamflow_jax.*", "data_pipelines", "data_pipelines.*", "configs", "benchmarks", "launch"]
  ),
  package_data={"data_pipelines": ["sentences.txt"]},
  # Ranges tested on Python 3.11 (CPU: jax 0.10.2; GPU machines carry jax 0.11.x).
  install_requires=[
    "jax>=0.10.2,<0.12",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.8,<0.13",
    "grain>=0.2.18,<0.3",
    "array-record>=0.8.6,<0.9",
    "tensorflow-datasets>=4.9.10,<4.10",
    "importlib_resources>=6",
    "ml-collections>=1.1,<2",
    "einops>=0.8,<0.9",
    "absl-py>=2.1,<3",
    "numpy>=2.0,<3",
    "tensorboardX>=2.6,<3",
    "tqdm>=4.66,<5",
    "scipy>=1.13,<2",
    "soundfile>=0.12,<0.15",
    "espeakng-loader>=0.2.4,<0.3",
    # jamflow_jax.motion.render: the ffmpeg binary (libx264, aac) for mp4s, PIL rasterises, plots.
    "imageio-ffmpeg>=0.8.1,<0.9",
    "pillow>=10,<14",
    "matplotlib>=3.8,<4",
    "protobuf>=4.21,<8",  # tfds records; data_pipelines.tfds_builder decodes them
    # gs:// workdirs: etils.epath reads and writes them through gcsfs (Orbax's arrays go
    # through tensorstore's own GCS driver).
    "gcsfs>=2025.1,<2027",
  ],
  extras_require={
    # librosa is the independent reference for the mel spectrogram tests.
    # gcp-storage-emulator: an in-memory GCS server, so gs:// workdirs are tested offline.
    "test": [
      "pytest>=8,<10",
      "librosa>=0.10,<0.12",
      "gcp-storage-emulator>=2026.7,<2027",
      "ruff>=0.17.6,<0.18",
    ],  # lint and format check (pyproject.toml), run by .ci/run
    # libtpu for Cloud TPU VMs, and for ahead-of-time compiles for TPU topologies on any host.
    "tpu": ["jax[tpu]>=0.10.2,<0.12"],
    # NVIDIA GPUs: jaxlib's CUDA 12 plugin with its CUDA libraries from pip (driver >= 525).
    "cuda": ["jax[cuda12]>=0.10.2,<0.12"],
  },
)
