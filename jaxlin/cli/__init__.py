"""The `jaxlin` command line: `main` (the console script, exit codes, signals) and one module per
command. Importing it does not import JAX: bad flags are reported before the heavy imports."""

from jaxlin.cli.main import console, main

__all__ = ["console", "main"]
