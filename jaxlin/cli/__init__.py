"""The `jaxlin` command line: `main` (the console script, exit codes, signals) and one module per
command. Importing it does not import JAX: bad flags are reported before the heavy imports.

Modules: `main` (parsing, dispatch through its `COMMANDS` table, exit codes, stops), `flags` (the
Config flags generated from its fields, list values, one-line usage errors), `hosts` (the flags,
checks and supervision of a run over several processes), `backend` (starting JAX), `streams`
(closed or broken stdout/stderr), and the commands `train`, `sweep`, `evaluate`, `download`,
`predict`.

A new command is one module here, named after the command (`jaxlin.cli.<command>`), with
`add_parser(subparsers)` (its flags, from `flags` and `hosts.add_flags` where they apply) and
`run(args, stop) -> int` (its exit code; raise a `jaxlin.errors.JaxlinError` for a problem the
user can fix), plus an optional `check(args)` run before JAX is imported and `STOPPABLE = True`
when SIGINT/SIGTERM should request a stop between chunks instead of stopping at once; then one
entry in `main.COMMANDS`. Import JAX only inside `run`.
"""

# Note: `from jaxlin.cli import main` is the function; the module is `import jaxlin.cli.main as cli_main`.
from jaxlin.cli.main import console, main

__all__ = ["console", "main"]
