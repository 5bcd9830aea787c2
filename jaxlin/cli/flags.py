"""The flag machinery the commands share: Config flags generated from its fields, list values, usage errors.

The flags of `Config` settings are generated from its fields (type, default, help and
choices), so every setting has one. Their defaults are left out of the parsed namespace
(`argparse.SUPPRESS`): the job learns which settings were given (`given_settings`), which
`--resume` needs to take the others from the checkpoint. Nothing here imports JAX.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing

from jaxlin.config import CONFIG_FIELDS, Config, parse_hidden_sizes

DEFAULTS = Config()


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line (and exit 2), pointing at --help instead of printing the usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _hidden_sizes(text: str) -> tuple[int, ...]:
    try:
        return parse_hidden_sizes(text)
    except ValueError as err:  # a usage error, in argparse's words around ours
        raise argparse.ArgumentTypeError(str(err)) from None


def non_empty(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


_PARSERS = {int: int, float: float, str: non_empty, tuple[int, ...]: _hidden_sizes}


def _parse_type(annotation):
    """int, float, str or tuple[int, ...], also when optional (`X | None`)."""
    options = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    if typing.get_origin(annotation) is tuple:
        options = [annotation]
    return _PARSERS[options[0]]


def _show_default(value) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def add_config_flags(parser: argparse.ArgumentParser, command: str, help_for: dict[str, str] | None = None) -> None:
    """One flag per Config field used by `command`, generated from the field; `help_for` gives a field
    the help text this command needs instead (a command that uses a setting differently)."""
    hints = typing.get_type_hints(Config)
    for field in dataclasses.fields(Config):
        meta = field.metadata
        if command not in meta["commands"]:
            continue
        default = field.default
        help_text = (help_for or {}).get(field.name) or meta["help"] + (
            "" if default is None or "default" in meta["help"] else f" (default: {_show_default(default)})")
        parse = _parse_type(hints[field.name])
        metavar = meta["metavar"] or {int: "N", float: "X"}.get(parse)
        parser.add_argument(f"--{field.name.replace('_', '-')}", *meta["aliases"], dest=field.name, type=parse,
                            choices=meta["choices"], metavar=metavar, default=argparse.SUPPRESS, help=help_text)


def add_compile_cache_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-compile-cache", action="store_true",
                        help="compile everything afresh: do not read or write JAX's persistent compilation cache "
                             "(kept in jaxlin's cache directory; also JAXLIN_COMPILE_CACHE=0)")


def add_observation_flags(parser: argparse.ArgumentParser) -> None:
    """--tensorboard and --profile, the same for train and sweep (see runs/tensorboard.py, runtime/profiling.py)."""
    parser.add_argument("--tensorboard", action="store_true",
                        help="also write the records as TensorBoard event files in OUTPUT_DIR/tensorboard, as they "
                             "are written (a sweep: a run per member); needs tensorboardX (pip install "
                             "'jaxlin[tensorboard]'); view with: tensorboard --logdir OUTPUT_DIR/tensorboard")
    parser.add_argument("--profile", nargs="?", const="auto", default=None, metavar="START:STOP",
                        help="write a jax.profiler trace of the chunks holding steps START to STOP (default: the "
                             "three chunks after the first, which compiles) to OUTPUT_DIR/profile, for "
                             "TensorBoard's Profile tab (pip install tensorboard xprof) or Perfetto")


def check_observation_flags(args: argparse.Namespace) -> None:
    """--profile's steps and --tensorboard's package, before JAX is imported (ConfigError)."""
    from jaxlin.runs.tensorboard import require_writer
    from jaxlin.runtime.profiling import parse_profile_steps

    parse_profile_steps(args.profile)
    if args.tensorboard:
        require_writer()


def observation_settings(args: argparse.Namespace) -> dict:
    """The keyword arguments of `train_and_evaluate` and `run_sweep` that the two flags give."""
    from jaxlin.runtime.profiling import parse_profile_steps

    return {"tensorboard": args.tensorboard, "profile": parse_profile_steps(args.profile)}


def float_list(text: str) -> tuple[float, ...]:
    return _number_list(text, float)


def int_list(text: str) -> tuple[int, ...]:
    return _number_list(text, int)


def _number_list(text: str, kind) -> tuple:
    parts = text.split(",")
    if len(parts) > 1 and any(not part.strip() for part in parts):
        raise argparse.ArgumentTypeError(f"an empty item in {text!r}")
    try:
        values = tuple(kind(part) for part in parts if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one value")
    return values


# The flags that take comma-separated lists: a list that starts with a negative number (`--seeds -1,2`)
# is not a number to argparse, which takes it for a flag (see `_join_list_values`).
LIST_FLAGS = ("--learning-rates", "--momentums", "--seeds", "--data-seeds", "--weight-decays", "--clip-norms",
              "--hidden-sizes")


def _join_list_values(argv: list[str]) -> list[str]:
    """`--seeds -1,2` as `--seeds=-1,2`, which argparse reads as the flag's value; the value is then
    checked like any other (and a negative seed refused by name)."""
    joined, i = [], 0
    while i < len(argv):
        token = argv[i]
        if token == "--":
            return joined + argv[i:]
        following = argv[i + 1] if i + 1 < len(argv) else ""
        if token in LIST_FLAGS and following.startswith("-") and not following.startswith("--") \
                and following != "-h":
            joined.append(f"{token}={following}")
            i += 2
            continue
        joined.append(token)
        i += 1
    return joined


def given_settings(args: argparse.Namespace) -> set[str]:
    """The Config fields set on the command line."""
    return {name for name in CONFIG_FIELDS if hasattr(args, name)}


def config_from_args(args: argparse.Namespace) -> Config:
    """The Config of the given settings; a command's own output directory (`output_dir_default`) when
    --output-dir is not given."""
    config = Config(**{name: getattr(args, name) for name in given_settings(args)})
    if "output_dir" not in given_settings(args) and hasattr(args, "output_dir_default"):
        config = config.replace(output_dir=args.output_dir_default)
    return config


def run_mode(args: argparse.Namespace) -> str:
    """"resume", "overwrite" or "new", from the --resume/--overwrite pair of train and sweep."""
    return "resume" if args.resume else "overwrite" if args.overwrite else "new"


def check_config(args: argparse.Namespace, config: Config) -> None:
    """Before JAX is imported: with --resume, only what each given value shows alone (the checkpoint
    holds the others); the data set's size is checked once it is loaded."""
    if args.resume:
        config.validate_fields(given_settings(args))
    else:
        config.validate()
