"""The config file of `python -m jamflow_jax.main --config=configs/base.py[:PRESET]`.

PRESET is one of jamflow_jax.presets.PRESETS (base when left out): base, demo, tiny, f5, 1b, 3b, 7b;
each field is documented where it is set, in jamflow_jax/presets.py. Override any field on the
command line, e.g. `--config.train.num_steps=100`; a config file of your own can start from a preset:

    from jamflow_jax.presets import get_config as preset

    def get_config():
      config = preset("demo")
      config.train.batch_size = 32
      return config
"""

from jamflow_jax.presets import PRESETS, get_config  # noqa: F401  (config_flags calls get_config)
