"""Shared by the benchmark scripts: config overrides from the command line, and the printed table."""

import ast


def override(config, assignment: str) -> None:
  """Applies `a.b=value` (value parsed as a Python literal, else kept as a string) to `config`."""
  key, _, text = assignment.partition("=")
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    value = text
  *parents, leaf = key.split(".")
  node = config
  for name in parents:
    node = node[name]
  node[leaf] = value


def print_table(rows: list[dict]) -> None:
  """Right-aligned columns, the union of the rows' keys in first-seen order; floats to 4 digits."""
  cols = list(dict.fromkeys(k for r in rows for k in r))
  fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
  table = [cols] + [[fmt(r.get(c, "")) for c in cols] for r in rows]
  widths = [max(len(line[i]) for line in table) for i in range(len(cols))]
  for line in table:
    print("  ".join(cell.rjust(w) for cell, w in zip(line, widths, strict=True)))
