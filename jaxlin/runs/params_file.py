"""Saving and loading trained params as a plain `.npz` (no pickle).

Any params pytree is stored leaf by leaf under the names of its key paths
(``layers/0/w`` for a dense stack, ``layers/conv1/w`` for the CNN); a ``__model__``
entry holds the model's JSON description and a ``__digest__`` entry the sha256 of
everything else (see `params_digest`), so a flipped byte is found before it is used.
Loading refuses anything but a regular file, reads every array's header before its
data (sizes and dtypes are capped), verifies the digest (files from older jaxlin
versions have none: they load with a note), rebuilds the expected tree from the
model (`jax.eval_shape` of its `init`) and checks every array against it before any
of its numbers are used.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import zipfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxlin.errors import JaxlinError
from jaxlin.config import MAX_PARAMS
from jaxlin.data.files import NotARegularFile, atomic_write, open_regular
from jaxlin.models import Model, model_from_spec

MODEL_KEY = "__model__"
DIGEST_KEY = "__digest__"
# The data's image shape (H, W, C) the params were trained on (int64 [3]): what `predict` makes images into.
IMAGE_SHAPE_KEY = "__image_shape__"
PREFIX = "layers"
# A model description is about a hundred bytes; anything this large is not one (a 430 KB file
# could otherwise hold a 100-million-character string that takes gigabytes to read).
MAX_MODEL_BYTES = 64 * 1024
_MAX_DIGEST_BYTES = 4 * 64  # 64 hex characters, stored as numpy's 4-byte characters
_TEXT_ENTRIES = {MODEL_KEY: MAX_MODEL_BYTES, DIGEST_KEY: _MAX_DIGEST_BYTES}
_ZIP_MAGIC = b"PK\x03\x04"


class CheckpointError(JaxlinError, ValueError):
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


def params_digest(arrays: dict[str, np.ndarray], model_json: str) -> str:
    """sha256 (hex) over each array's name, dtype, shape and bytes, in sorted name order, then the
    model description: what `save_params` stores under ``__digest__`` and `load_params` checks."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        value = np.ascontiguousarray(arrays[name])
        shape = ",".join(str(n) for n in value.shape)
        digest.update(f"{name}\0{value.dtype.str}\0{shape}\0".encode("utf-8", "surrogatepass"))
        digest.update(value.reshape(-1).view(np.uint8))  # the bytes, without a copy
    digest.update(f"{MODEL_KEY}\0{model_json}".encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def save_params(path: str | os.PathLike, params, model: Model, image_shape: tuple[int, ...] | None = None) -> None:
    """`image_shape` (H, W, C), the data's, is stored too (and covered by the digest)."""
    arrays = {name: _stored(value) for name, value in leaf_names(params)}
    if image_shape is not None:
        arrays[IMAGE_SHAPE_KEY] = np.asarray(image_shape, np.int64)
    model_json = json.dumps(model.spec)
    digest = params_digest(arrays, model_json)
    arrays[MODEL_KEY] = np.array(model_json)
    arrays[DIGEST_KEY] = np.array(digest)
    atomic_write(path, lambda handle: np.savez(handle, **arrays))


def _stored(value) -> np.ndarray:
    """A params leaf as the file holds it: in its own dtype (float32 for the built-in models; an integer
    permutation or counter stays an integer), numpy's kinds only (a bfloat16 leaf is stored as float32)."""
    value = np.asarray(value)
    return value if value.dtype.kind in "biufc" else value.astype(np.float32)


def _expected_dtype(leaf) -> np.dtype:
    """The dtype a params file holds for a leaf of this dtype (see `_stored`)."""
    dtype = np.dtype(leaf.dtype)
    return dtype if dtype.kind in "biufc" else np.dtype(np.float32)


def _names(names, most: int = 6) -> str:
    names = sorted(names)
    shown = ", ".join(n.removeprefix(PREFIX + "/") for n in names[:most])
    return f"{shown}, ... ({len(names)} in all)" if len(names) > most else shown or "none"


def _open_params(path: Path):
    """The params file opened for reading; a FIFO or device is refused without waiting (`files`)."""
    try:
        return open_regular(path)
    except FileNotFoundError as err:
        raise CheckpointError(f"{path}: no such params file") from err
    except IsADirectoryError as err:
        raise CheckpointError(f"{path}: is a directory, not a params file") from err
    except NotARegularFile as err:
        raise CheckpointError(f"{path}: not a regular file (a params file is an .npz written by `jaxlin train`)") \
            from err
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read the params file ({err.strerror or err})") from err


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    with _open_params(path) as handle:
        try:
            magic = handle.read(4)
        except OSError as err:
            raise CheckpointError(f"{path}: cannot read the params file ({err.strerror or err})") from err
        if magic != _ZIP_MAGIC:
            raise CheckpointError(f"{path}: not a params file (an .npz written by `jaxlin train`)")
        try:
            handle.seek(0)
            _check_array_headers(path, handle)
            handle.seek(0)
            with np.load(handle, allow_pickle=False) as archive:
                return {name: archive[name] for name in archive.files}
        except CheckpointError:
            raise
        except zipfile.BadZipFile as err:
            if "CRC" in str(err):  # a byte flipped inside a member: the zip's own checksum
                raise CheckpointError(f"{path}: params file is damaged ({_first_line(err)})") from err
            raise CheckpointError(f"{path}: not a readable params file ({_first_line(err)})") from err
        except (OSError, ValueError, EOFError, MemoryError) as err:
            raise CheckpointError(f"{path}: not a readable params file ({_first_line(err)})") from err


def _first_line(err) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:300]


def _check_array_headers(path: Path, handle) -> None:
    """Reads every member's header, never its data: refuses an array too large for any model, one
    that is not numbers, and a model description or digest that is not a short string."""
    total = 0
    with zipfile.ZipFile(handle) as archive:
        for member in archive.namelist():
            name = member.removesuffix(".npy")
            with archive.open(member) as entry:
                version = np.lib.format.read_magic(entry)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, _, dtype = read_header(entry)
            count = math.prod(shape)
            if name in _TEXT_ENTRIES:
                if dtype.kind != "U" or shape != ():
                    raise CheckpointError(f"{path}: {name} is not a string ({dtype}{list(shape)})")
                if dtype.itemsize > _TEXT_ENTRIES[name]:
                    raise CheckpointError(f"{path}: {name} holds {dtype.itemsize:,} bytes, more than it can in a "
                                          f"params file ({_TEXT_ENTRIES[name]:,})")
                continue
            if dtype.kind not in "biufc" or dtype.hasobject or dtype.fields is not None:
                raise CheckpointError(f"{path}: {name} does not hold numbers (dtype {dtype})")
            if count > MAX_PARAMS:
                raise CheckpointError(f"{path}: {name} holds {count:,} values, "
                                      f"more than any model here ({MAX_PARAMS:,})")
            total += count
            if total > MAX_PARAMS:
                raise CheckpointError(f"{path}: its arrays hold more than {MAX_PARAMS:,} values, "
                                      f"more than any model here")


def _text_entry(path: Path, value: np.ndarray, name: str) -> str:
    try:
        return str(value.item())
    except (ValueError, UnicodeError) as err:
        raise CheckpointError(f"{path}: {name} is not readable text ({_first_line(err)})") from err


def _note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _stored_image_shape(path: Path, value: np.ndarray | None) -> tuple[int, int, int] | None:
    if value is None:
        return None
    if value.shape != (3,) or value.dtype.kind not in "iu" or value.min() < 1:
        raise CheckpointError(f"{path}: {IMAGE_SHAPE_KEY} is not an image shape (H, W, C)")
    return tuple(int(d) for d in value)


def stored_image_shape(path: str | os.PathLike) -> tuple[int, int, int] | None:
    """The image shape (H, W, C) a params file was trained on; None in files of a jaxlin before other
    data sets (MNIST's then). Read after `load_params` has verified the file."""
    path = Path(path)
    with _open_params(path) as handle:
        try:
            with np.load(handle, allow_pickle=False) as archive:  # reads that one small entry, not the params
                value = archive[IMAGE_SHAPE_KEY] if IMAGE_SHAPE_KEY in archive.files else None
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
            raise CheckpointError(f"{path}: not a readable params file ({_first_line(err)})") from err
    return _stored_image_shape(path, value)


def _spec_sizes(spec) -> tuple[int | None, int | None]:
    """(inputs, classes) as a model description states them, or None where it does not."""
    sizes = spec.get("layer_sizes") if isinstance(spec, dict) else None
    if isinstance(sizes, list) and len(sizes) >= 2 and all(type(v) is int for v in (sizes[0], sizes[-1])):
        return sizes[0], sizes[-1]
    return None, None


def load_params(path: str | os.PathLike, model: Model | None = None, input_size: int | None = None,
                num_classes: int | None = None, log=_note,
                image_shape: tuple[int, int, int] | None = None) -> tuple[Any, Model]:
    """Loads params; checks them against `model` (or the model the file names, which must fit
    images of `image_shape` (H, W, C) or of `input_size` values, and `num_classes` classes: the
    data's, when given; else what the file says it was trained on).

    A file without a digest (written by a jaxlin older than digests) loads after its other
    checks, and `log` (default: a line on stderr) says that it was not verified."""
    path = Path(path)
    arrays = _read_npz(path)
    if MODEL_KEY not in arrays:
        raise CheckpointError(f"{path}: no model description in the params file")
    model_json = _text_entry(path, arrays.pop(MODEL_KEY), "the model description")
    stored_digest = arrays.pop(DIGEST_KEY, None)
    if stored_digest is not None and _text_entry(path, stored_digest, "the digest") != params_digest(
            arrays, model_json):
        raise CheckpointError(f"{path}: params file is damaged (digest mismatch)")
    saved_shape = _stored_image_shape(path, arrays.pop(IMAGE_SHAPE_KEY, None))
    if image_shape is not None and saved_shape is not None and tuple(image_shape) != saved_shape:
        raise CheckpointError(f"{path}: the params are for images of shape {saved_shape}, these are "
                              f"{tuple(image_shape)}")
    try:
        spec = json.loads(model_json)
        spec_inputs, spec_classes = _spec_sizes(spec)
        image_shape = image_shape or (saved_shape if input_size is None else None)
        input_size = input_size or spec_inputs or 784
        num_classes = num_classes or spec_classes or 10
        saved_model = model_from_spec(spec, input_size, num_classes, image_shape)
    except RecursionError as err:
        raise CheckpointError(f"{path}: the model description is nested too deeply to be one") from err
    except ValueError as err:  # JSON errors and ModelError
        raise CheckpointError(f"{path}: {_first_line(err)}") from err
    model = model or saved_model
    if model.spec != saved_model.spec:
        raise CheckpointError(
            f"{path}: params are for model {saved_model.describe()}, not {model.describe()}")
    expected = jax.eval_shape(model.init, jax.random.key(0))
    names = leaf_names(expected)
    if set(arrays) != {name for name, _ in names}:
        raise CheckpointError(f"{path}: the params file holds arrays {_names(arrays)}; the model "
                              f"{model.describe()} expects {_names(n for n, _ in names)}")
    for name, shape in names:
        value, dtype = arrays[name], _expected_dtype(shape)
        if value.shape != shape.shape or value.dtype != dtype:
            raise CheckpointError(
                f"{path}: {name} is {value.dtype}{list(value.shape)}, "
                f"expected {dtype}{list(shape.shape)} for {model.describe()}")
        if value.dtype.kind in "fc" and not np.all(np.isfinite(value)):
            raise CheckpointError(f"{path}: {name} holds non-finite values")
    leaves = [arrays[name] if np.dtype(shape.dtype) == arrays[name].dtype else arrays[name].astype(shape.dtype)
              for name, shape in names]
    if stored_digest is None:
        log(f"jaxlin: note: {path} has no digest (written by an older jaxlin); not verified")
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(expected), leaves), model
