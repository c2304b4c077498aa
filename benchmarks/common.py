"""Shared by the benchmark scripts (`python -m benchmarks.NAME` from the repository root): the
config flag, as `python -m jamflow_jax.main` has it, the printed table and `--json=PATH` (the same
rows as a JSON list, for the device suite and other tools).

`--config=configs/base.py --config.a.b=value` overrides (as main: given after --config); a script
that measures several presets applies the same overrides to each (`preset_config`).
"""

import json
import math

from absl import flags
from ml_collections import config_flags

from jamflow_jax import cli, presets

# No default: config_flags would load a default file while this module is imported, where a bad
# override could only end in a traceback.
CONFIG = config_flags.DEFINE_config_file(
  "config",
  None,
  "configs/base.py[:PRESET] to take --config.a.b=value overrides from; they apply to every preset a script measures",
)

JSON = flags.DEFINE_string("json", "", "also write the table's rows to this file as a JSON list (NaN as null)")


def preset_config(preset: str):
  """`presets.get_config(preset)` with the command line's --config.a.b overrides."""
  config = presets.get_config(preset)
  if CONFIG.value is not None:
    config.update_from_flattened_dict(config_flags.get_override_values(flags.FLAGS["config"]))
  return config


def run(main) -> None:
  """app.run(main) with one-line errors for bad flags, overrides and configs (jamflow_jax.cli)."""
  cli.run(main, lambda argv: cli.parse_flags(argv, CONFIG))


def print_table(rows: list[dict]) -> None:
  """Right-aligned columns, the union of the rows' keys in first-seen order; floats to 4 digits."""
  cols = list(dict.fromkeys(k for r in rows for k in r))
  fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
  table = [cols] + [[fmt(r.get(c, "")) for c in cols] for r in rows]
  widths = [max(len(line[i]) for line in table) for i in range(len(cols))]
  for line in table:
    print("  ".join(cell.rjust(w) for cell, w in zip(line, widths, strict=True)))


def write_json(path: str, rows: list[dict]) -> None:
  """rows -> a JSON list at `path` (a local file); NaN becomes null."""
  clean = lambda v: None if isinstance(v, float) and math.isnan(v) else v
  with open(path, "w") as f:
    json.dump([{k: clean(v) for k, v in row.items()} for row in rows], f, indent=1)


def report(rows: list[dict], header: str = "") -> None:
  """Print `header` and the table; with --json also write the rows there."""
  if header:
    print(header)
  print_table(rows)
  if JSON.value:
    write_json(JSON.value, rows)
    print(f"wrote {len(rows)} rows to {JSON.value}")
