"""Inference: JAM-Flow's tasks through one trained model, and the Python API for them.

    from jamflow_jax.inference import Pipeline
    pipe = Pipeline.from_workdir("runs/demo")                  # EMA weights of the latest checkpoint
    out = pipe.text_to_speech("The quick brown fox.", seed=0)  # speech + motion
    out.save("samples", "fox")                                 # fox.wav, fox.npz, fox.json

  call              audio                              motion                         text          task
  text_to_speech    [voice prompt] + generated         [motion prompt] + generated    prompt + new  joint (tts)
  audio_to_motion   all given (the wav)                generated                      given or none a2m
  dub               generated                          all given (the npz)            given         dub
  edit              span regenerated, rest given       span regenerated, rest given   the whole clip's

Modules: `pipeline` (loading a run, one model call per clip, the tasks), `inputs` (wav, motion and
text loading and checks), `long_form` (chunk planning and cross-fades), `jobs` (the `--mode=sample`
job schema), `result` (what a task returns and the files it writes).
"""

from jamflow_jax.errors import InputError  # noqa: F401
from jamflow_jax.inference.pipeline import Clip, Pipeline, saved_config  # noqa: F401
from jamflow_jax.inference.result import Result  # noqa: F401
