"""The Python API's documented entry point: `from jamflow_jax.generate import Pipeline`.

The implementation is the `jamflow_jax.inference` package; these are its public names.
"""

from jamflow_jax.inference import Clip, InputError, Pipeline, Result, saved_config  # noqa: F401
from jamflow_jax.inference.jobs import JOBS, check_job, read_jobs, run_job, run_jobs  # noqa: F401
