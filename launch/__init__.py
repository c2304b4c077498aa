"""Launchers and ahead-of-time compiles: `python -m launch.tpu_compile` from the repository root."""
