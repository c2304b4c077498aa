"""The module structure: imports run one way (data_pipelines -> jamflow_jax, never back), no cycles,
the leaf modules import nothing of the project, and loading a config file imports no kernel."""

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("jamflow_jax", "data_pipelines", "configs")
LEAVES = ("jamflow_jax.errors", "jamflow_jax.choices", "jamflow_jax.tasks", "jamflow_jax.axes")
ENTRY_POINT = "jamflow_jax.main"  # wires the data pipelines to the library (the composition root)


def _modules() -> dict[str, pathlib.Path]:
  out = {}
  for package in PACKAGES:
    for path in (ROOT / package).rglob("*.py"):
      parts = path.relative_to(ROOT).with_suffix("").parts
      out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
  return out


def import_graph() -> dict[str, set[str]]:
  """{module: the project modules it imports (at any level of the file)}."""
  modules = _modules()

  def owner(name: str) -> str | None:  # the module a dotted import name lives in
    while name and name not in modules:
      name = name.rpartition(".")[0]
    return name or None

  graph = {}
  for name, path in modules.items():
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        targets.update(owner(a.name) for a in node.names)
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
          base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
        targets.update(owner(f"{base}.{a.name}") or owner(base) for a in node.names)
    graph[name] = {t for t in targets if t and t != name}
  return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components of more than one module (Tarjan)."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in graph.get(v, ()):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while not component or component[-1] != v:
        component.append(stack.pop())
        on_stack.discard(component[-1])
      if len(component) > 1:
        out.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def test_imports_have_no_cycles():
  assert _cycles(import_graph()) == []


def test_the_library_does_not_import_data_pipelines_or_configs():
  graph = import_graph()
  edges = sorted(
    (a, b)
    for a, targets in graph.items()
    for b in targets
    if a.startswith("jamflow_jax") and a != ENTRY_POINT and b.split(".")[0] in ("data_pipelines", "configs")
  )
  assert edges == []


def test_leaf_modules_import_nothing_of_the_project():
  graph = import_graph()
  assert {leaf: graph[leaf] for leaf in LEAVES if graph[leaf]} == {}


def test_loading_a_config_file_imports_no_kernel_and_no_model():
  code = (
    "import sys; from ml_collections import config_flags; from absl import flags; "
    "config_flags.DEFINE_config_file('config'); flags.FLAGS(['x', '--config=configs/base.py:demo']); "
    "flags.FLAGS.config; from jamflow_jax import config; config.validate(flags.FLAGS.config); "
    "print(sorted(m for m in sys.modules if 'pallas' in m or m.startswith(('flax', 'jamflow_jax.model'))))"
  )
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout.strip() == "[]"
