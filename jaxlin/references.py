"""A user's object named by reference, MODULE:NAME, as `--model` and `--optimizer` take it.

MODULE is imported from the current directory or PYTHONPATH (the console script's path lacks the
working directory, so it is added); NAME may be dotted (a class attribute). Every failure is one
line naming the flag, in the caller's error class.
"""

from __future__ import annotations


def import_reference(reference: str, flag: str, error: type[Exception]):
    """The object MODULE:NAME names; `error(...)` naming `flag` when it cannot be imported or found."""
    import importlib
    import os
    import sys

    module_name, _, attribute = reference.partition(":")
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.insert(0, here)
    try:
        target = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if not _is_the_module(err.name, module_name):  # the module was found; something it imports was not
            raise error(f"{flag} {reference}: importing {module_name} failed: {type(err).__name__}: "
                        f"{_first_line(err)}") from err
        raise error(f"{flag} {reference}: cannot import {module_name} ({_first_line(err)}); run jaxlin from the "
                    f"directory that holds it, or add that directory to PYTHONPATH") from err
    except Exception as err:  # the user's module failed while it was imported: say where, in one line
        raise error(f"{flag} {reference}: importing {module_name} failed: {type(err).__name__}: "
                    f"{_first_line(err)}") from err
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise error(f"{flag} {reference}: {module_name} has no {attribute}")
        target = getattr(target, part)
    return target


def _is_the_module(missing: str | None, module_name: str) -> bool:
    """Whether a ModuleNotFoundError for `missing` means `module_name` itself (or a package above it) is not
    there, rather than a module it imports."""
    return missing is None or missing == module_name or module_name.startswith(missing + ".")


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [""])[0][:200]
