"""Saving and loading trained params as a plain `.npz` (no pickle).

Each array is stored under ``layers/<i>/<name>``; a ``__model__`` entry holds a
JSON description of the model, so a file can be checked against the model it
is loaded for before any of its numbers are used.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from jaxlin.models import Model, get_model

MODEL_KEY = "__model__"


class CheckpointError(ValueError):
    """A params file that cannot be read or does not fit the model."""


def model_spec(model: Model) -> dict:
    return {"name": model.name, "layer_sizes": list(model.layer_sizes), "activation": model.activation}


def model_from_spec(spec: dict) -> Model:
    sizes = spec["layer_sizes"]
    activation = spec["activation"] if spec["name"] == "mlp" else "relu"
    return get_model(spec["name"], hidden_sizes=sizes[1:-1], activation=activation,
                     input_size=sizes[0], num_classes=sizes[-1])


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


def save_params(path: str | os.PathLike, params: list, model: Model) -> None:
    arrays = {f"layers/{i}/{name}": np.asarray(value, np.float32)
              for i, layer in enumerate(params) for name, value in layer.items()}
    arrays[MODEL_KEY] = np.array(json.dumps(model_spec(model)))
    atomic_write(path, lambda handle: np.savez(handle, **arrays))


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except FileNotFoundError as err:
        raise CheckpointError(f"{path}: no such params file") from err
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise CheckpointError(f"{path}: not a readable params file ({err})") from err


def load_params(path: str | os.PathLike, model: Model | None = None) -> tuple[list, Model]:
    """Loads params; checks them against `model` (or the model the file names)."""
    path = Path(path)
    arrays = _read_npz(path)
    try:
        saved_model = model_from_spec(json.loads(str(arrays.pop(MODEL_KEY))))
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: no valid model description in the params file ({err})") from err
    model = model or saved_model
    if model_spec(model) != model_spec(saved_model):
        raise CheckpointError(
            f"{path}: params are for model {saved_model.describe()}, not {model.describe()}")
    params = _unflatten(arrays, len(model.layer_sizes) - 1, path)
    _check_shapes(params, model, path)
    return params, model


def _unflatten(arrays: dict, num_layers: int, path: Path) -> list:
    expected = {f"layers/{i}/{name}" for i in range(num_layers) for name in ("w", "b")}
    if set(arrays) != expected:
        raise CheckpointError(f"{path}: expected arrays {sorted(expected)}, found {sorted(arrays)}")
    return [{name: arrays[f"layers/{i}/{name}"] for name in ("w", "b")} for i in range(num_layers)]


def _check_shapes(params: list, model: Model, path: Path) -> None:
    sizes = model.layer_sizes
    for i, layer in enumerate(params):
        want = {"w": (sizes[i], sizes[i + 1]), "b": (sizes[i + 1],)}
        for name, shape in want.items():
            value = layer[name]
            if value.shape != shape or value.dtype != np.float32:
                raise CheckpointError(
                    f"{path}: layers/{i}/{name} is {value.dtype}{list(value.shape)}, "
                    f"expected float32{list(shape)} for {model.describe()}")
            if not np.all(np.isfinite(value)):
                raise CheckpointError(f"{path}: layers/{i}/{name} holds non-finite values")
