"""`adfactory`: the operator commands (factory.cli.app) and the developer commands under `adfactory dev`
(factory.cli.dev), sharing one set of option declarations and one error guard (factory.cli.options)."""

from factory.cli.app import app, main  # `main` is the console script's entry point (pyproject.toml)

__all__ = ["app", "main"]
