"""Saving and loading trained params as a plain `.npz` (no pickle).

Any params pytree is stored leaf by leaf under the names of its key paths
(``layers/0/w`` for a dense stack, ``layers/conv1/w`` for the CNN); a ``__model__``
entry holds the model's JSON description. Loading rebuilds the expected tree from
that model (`jax.eval_shape` of its `init`) and checks every array against it before
any of its numbers are used.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxlin.config import MAX_PARAMS
from jaxlin.models import Model, model_from_spec

MODEL_KEY = "__model__"
PREFIX = "layers"
_ZIP_MAGIC = b"PK\x03\x04"


class CheckpointError(ValueError):
    """A params file that cannot be read or does not fit the model."""


def _key_name(entry) -> str:
    for attribute in ("key", "idx", "name"):  # DictKey, SequenceKey, GetAttrKey
        if hasattr(entry, attribute):
            return str(getattr(entry, attribute))
    return str(entry)


def leaf_names(tree) -> list[tuple[str, Any]]:
    """(name, leaf) for every leaf of a params pytree, named by its key path: ``layers/0/w``,
    ``layers/conv1/b``."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [("/".join([PREFIX, *(_key_name(k) for k in path)]), leaf) for path, leaf in leaves]


def atomic_write(path: str | os.PathLike, write) -> None:
    """Calls write(file) on a temporary file beside `path`, then renames it into place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        # mkstemp makes owner-only files; give the result the usual umask-based mode.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_params(path: str | os.PathLike, params, model: Model) -> None:
    arrays = {name: np.asarray(value, np.float32) for name, value in leaf_names(params)}
    arrays[MODEL_KEY] = np.array(json.dumps(model.spec))
    atomic_write(path, lambda handle: np.savez(handle, **arrays))


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except FileNotFoundError as err:
        raise CheckpointError(f"{path}: no such params file") from err
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read the params file ({err.strerror or err})") from err
    if magic != _ZIP_MAGIC:
        raise CheckpointError(f"{path}: not a params file (an .npz written by `jaxlin train`)")
    try:
        _check_array_headers(path)
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except CheckpointError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise CheckpointError(f"{path}: not a readable params file ({err})") from err


def _check_array_headers(path: Path) -> None:
    """Refuses an array too large for any model before a byte of it is decompressed."""
    with zipfile.ZipFile(path) as archive:
        for member in archive.namelist():
            with archive.open(member) as handle:
                version = np.lib.format.read_magic(handle)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, _, dtype = read_header(handle)
            if math.prod(shape) > MAX_PARAMS:
                raise CheckpointError(f"{path}: {member.removesuffix('.npy')} holds {math.prod(shape):,} values, "
                                      f"more than any model here ({MAX_PARAMS:,})")


def load_params(path: str | os.PathLike, model: Model | None = None, input_size: int = 784,
                num_classes: int = 10) -> tuple[Any, Model]:
    """Loads params; checks them against `model` (or the model the file names, which must fit
    inputs of `input_size` values and `num_classes` classes)."""
    path = Path(path)
    arrays = _read_npz(path)
    if MODEL_KEY not in arrays:
        raise CheckpointError(f"{path}: no model description in the params file")
    try:
        saved_model = model_from_spec(json.loads(str(arrays.pop(MODEL_KEY))), input_size, num_classes)
    except ValueError as err:  # JSON errors and ModelError
        raise CheckpointError(f"{path}: {err}") from err
    model = model or saved_model
    if model.spec != saved_model.spec:
        raise CheckpointError(
            f"{path}: params are for model {saved_model.describe()}, not {model.describe()}")
    expected = jax.eval_shape(model.init, jax.random.key(0))
    names = leaf_names(expected)
    if set(arrays) != {name for name, _ in names}:
        raise CheckpointError(f"{path}: expected arrays {sorted(n for n, _ in names)}, found {sorted(arrays)}")
    for name, shape in names:
        value = arrays[name]
        if value.shape != shape.shape or value.dtype != np.float32:
            raise CheckpointError(
                f"{path}: {name} is {value.dtype}{list(value.shape)}, "
                f"expected float32{list(shape.shape)} for {model.describe()}")
        if not np.all(np.isfinite(value)):
            raise CheckpointError(f"{path}: {name} holds non-finite values")
    leaves = [arrays[name] for name, _ in names]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(expected), leaves), model
