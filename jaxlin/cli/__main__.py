"""`python -m jaxlin.cli`: the `jaxlin` command (also how a supervised child of a multi-process run starts)."""

from jaxlin.cli.main import console

console()
