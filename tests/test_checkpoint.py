"""Saving and loading params, and every way a params file can be wrong."""

import json

import jax
import numpy as np
import pytest

from jaxlin.runs.params_file import MODEL_KEY, CheckpointError, load_params, save_params
from jaxlin.models import get_model


def _save_mlp(path):
    model = get_model("mlp", hidden_sizes=(8,), activation="tanh")
    params = model.init(jax.random.key(0))
    save_params(path, params, model)
    return params, model


def test_roundtrip_restores_params_and_model(tmp_path):
    params, model = _save_mlp(tmp_path / "p.npz")
    loaded, loaded_model = load_params(tmp_path / "p.npz")
    assert loaded_model.describe() == model.describe() == "mlp 784-8-10 (tanh)"
    jax.tree.map(np.testing.assert_array_equal, loaded, params)
    with np.load(tmp_path / "p.npz", allow_pickle=False) as archive:  # plain arrays, no pickle
        assert json.loads(str(archive[MODEL_KEY]))["name"] == "mlp"


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such params file"):
        load_params(tmp_path / "nope.npz")


def test_files_that_are_not_params(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"this is not a zip archive")
    (tmp_path / "metrics.json").write_text('{"final_test_accuracy": 0.9}')
    for name in ("junk.npz", "metrics.json"):
        with pytest.raises(CheckpointError, match=r"not a params file \(an .npz written by `jaxlin train`\)") as info:
            load_params(tmp_path / name)
        assert "pickle" not in str(info.value)
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 and then nothing")
    with pytest.raises(CheckpointError, match="not a readable params file"):
        load_params(tmp_path / "broken.npz")


def _described(path, spec, arrays):
    np.savez(path, **arrays, __model__=np.array(json.dumps(spec)))
    return path


@pytest.mark.parametrize("spec, message", [
    ({"name": "linear", "layer_sizes": [100, 10], "activation": "none"},
     "the params take inputs of 100 values; these images have 784"),
    ({"name": "linear", "layer_sizes": [784, 20], "activation": "none"},
     "the params predict 20 classes; this data set has 10"),
    ({"name": "mlp", "layer_sizes": [], "activation": "relu"}, "has no valid layer sizes"),
    ({"name": "mlp", "layer_sizes": [784, 0, 10], "activation": "relu"}, "has no valid layer sizes"),
    ({"name": "linear", "layer_sizes": [784, 5, 10], "activation": "none"}, "a linear model has no hidden layers"),
    ({"name": "resnet", "layer_sizes": [784, 10]}, "unknown model 'resnet'"),
    (["not", "an", "object"], "not an object with a name"),
])
def test_descriptions_that_do_not_fit_mnist(tmp_path, spec, message):
    sizes = spec.get("layer_sizes") if isinstance(spec, dict) else None
    arrays = ({"layers/0/w": np.zeros((sizes[0], sizes[-1]), np.float32),
               "layers/0/b": np.zeros(sizes[-1], np.float32)} if sizes and min(sizes) > 0 else {})
    with pytest.raises(CheckpointError, match=message):  # MNIST's sizes, as `jaxlin evaluate` on MNIST gives them
        load_params(_described(tmp_path / "p.npz", spec, arrays), input_size=784, num_classes=10)


def test_any_params_pytree_round_trips(tmp_path):
    model = get_model("cnn")
    params = model.init(jax.random.key(1))
    save_params(tmp_path / "cnn.npz", params, model)
    with np.load(tmp_path / "cnn.npz") as archive:
        assert "layers/conv1/w" in archive.files and "layers/out/b" in archive.files
    loaded, loaded_model = load_params(tmp_path / "cnn.npz")
    assert loaded_model.describe() == "cnn 784-conv32-conv64-256-10"
    jax.tree.map(np.testing.assert_array_equal, loaded, jax.device_get(params))


def test_file_for_another_model(tmp_path):
    _save_mlp(tmp_path / "p.npz")
    with pytest.raises(CheckpointError, match=r"params are for model mlp 784-8-10 \(tanh\), not linear 784-10"):
        load_params(tmp_path / "p.npz", get_model("linear"))


def test_wrong_shapes(tmp_path):
    model = get_model("linear")
    save_params(tmp_path / "p.npz", [{"w": np.zeros((784, 9), np.float32), "b": np.zeros(10, np.float32)}], model)
    with pytest.raises(CheckpointError, match=r"layers/0/w is float32\[784, 9\], expected float32\[784, 10\]"):
        load_params(tmp_path / "p.npz")


def test_missing_arrays_and_description(tmp_path):
    np.savez(tmp_path / "bare.npz", w=np.zeros((784, 10), np.float32))
    with pytest.raises(CheckpointError, match="no model description in the params file"):
        load_params(tmp_path / "bare.npz")
    model = get_model("mlp", hidden_sizes=(8,))
    save_params(tmp_path / "short.npz", model.init(jax.random.key(0))[:1], model)
    with pytest.raises(CheckpointError, match=r"the params file holds arrays 0/b, 0/w; the model mlp 784-8-10 "
                                              r"\(relu\) expects 0/b, 0/w, 1/b, 1/w$"):
        load_params(tmp_path / "short.npz")


def test_non_finite_values(tmp_path):
    model = get_model("linear")
    save_params(tmp_path / "p.npz", [{"w": np.full((784, 10), np.nan, np.float32),
                                      "b": np.zeros(10, np.float32)}], model)
    with pytest.raises(CheckpointError, match="non-finite"):
        load_params(tmp_path / "p.npz")


def test_a_failed_save_leaves_nothing(tmp_path):
    model = get_model("linear")
    with pytest.raises(TypeError):
        save_params(tmp_path / "p.npz", [{"w": object(), "b": np.zeros(10)}], model)
    assert list(tmp_path.iterdir()) == []


# Integrity: a digest over every array and the model description; files from older versions.

def _rewrite_member(path, member, change):
    """The npz rewritten with `member`'s bytes changed (the zip's checksums made to match again)."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    members[member] = change(members[member])
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def _flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1:]


def _data_offset(path, member):
    """Where `member`'s bytes start in a STORED zip (after its local header)."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
    assert info.compress_type == zipfile.ZIP_STORED
    raw = path.read_bytes()
    local = info.header_offset
    name_length = int.from_bytes(raw[local + 26:local + 28], "little")
    extra_length = int.from_bytes(raw[local + 28:local + 30], "little")
    return local + 30 + name_length + extra_length


def test_a_saved_file_is_verified_and_loads_without_a_note(tmp_path, capsys):
    from jaxlin.runs.params_file import DIGEST_KEY, params_digest

    params, model = _save_mlp(tmp_path / "p.npz")
    with np.load(tmp_path / "p.npz", allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    stored = str(arrays.pop(DIGEST_KEY))
    assert len(stored) == 64 and stored == params_digest(
        {k: v for k, v in arrays.items() if k != MODEL_KEY}, str(arrays[MODEL_KEY]))
    load_params(tmp_path / "p.npz")
    assert capsys.readouterr().err == ""


def test_a_flipped_byte_in_an_array_is_a_digest_mismatch(tmp_path, tiny_data_dir, capsys):
    from jaxlin.cli.main import main

    _save_mlp(tmp_path / "p.npz")
    _rewrite_member(tmp_path / "p.npz", "layers/0/w.npy", lambda data: _flip(data, len(data) - 100))
    with pytest.raises(CheckpointError) as info:
        load_params(tmp_path / "p.npz")
    assert str(info.value) == f"{tmp_path / 'p.npz'}: params file is damaged (digest mismatch)"
    assert main(["evaluate", str(tmp_path / "p.npz"), "--data-dir", str(tiny_data_dir)]) == 2
    err = capsys.readouterr().err
    assert err == f"jaxlin: error: {tmp_path / 'p.npz'}: params file is damaged (digest mismatch)\n"


def test_a_changed_model_description_is_a_digest_mismatch(tmp_path):
    _save_mlp(tmp_path / "p.npz")  # tanh
    _rewrite_member(tmp_path / "p.npz", MODEL_KEY + ".npy",
                    lambda data: data.replace("tanh".encode("utf-32-le"), "relu".encode("utf-32-le")))
    with pytest.raises(CheckpointError, match=r"damaged \(digest mismatch\)"):
        load_params(tmp_path / "p.npz")


def test_a_flipped_byte_in_a_stored_file_is_one_line_from_the_command(tmp_path, tiny_data_dir):
    """The raw file changed in place (zip checksums left as they were), then `jaxlin evaluate` in its own
    process: exit 2 and one line."""
    import os
    import subprocess
    import sys

    path = tmp_path / "p.npz"
    _save_mlp(path)
    offset = _data_offset(path, "layers/0/w.npy") + 128 + 1000  # past the .npy header, inside the weights
    path.write_bytes(_flip(path.read_bytes(), offset))
    run = subprocess.run([sys.executable, "-m", "jaxlin.cli", "evaluate", str(path), "--data-dir",
                          str(tiny_data_dir)], env={**os.environ, "JAXLIN_MIRRORS": "http://127.0.0.1:9/"},
                         capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 2, run.stderr
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr
    assert run.stderr.startswith(f"jaxlin: error: {path}: params file is damaged (")


def test_a_file_from_an_older_jaxlin_without_a_digest_loads_with_a_note(tmp_path, capsys):
    params, model = _save_mlp(tmp_path / "new.npz")
    with np.load(tmp_path / "new.npz", allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files if name != "__digest__"}
    np.savez(tmp_path / "old.npz", **arrays)
    loaded, loaded_model = load_params(tmp_path / "old.npz")
    jax.tree.map(np.testing.assert_array_equal, loaded, params)
    assert capsys.readouterr().err == (f"jaxlin: note: {tmp_path / 'old.npz'} has no digest (written by an older "
                                       f"jaxlin); not verified\n")
    lines = []
    load_params(tmp_path / "old.npz", log=lines.append)
    assert len(lines) == 1 and capsys.readouterr().err == ""


# Model descriptions from a file are data: bounded in size and depth, checked for type.

LINEAR_ARRAYS = {"layers/0/w": np.zeros((784, 10), np.float32), "layers/0/b": np.zeros(10, np.float32)}


def test_a_deeply_nested_model_description_is_one_error(tmp_path):
    np.savez(tmp_path / "deep.npz", **LINEAR_ARRAYS, __model__=np.array("[" * 100_000 + "]" * 100_000))
    with pytest.raises(CheckpointError, match=r"__model__ holds 800,000 bytes, more than it can in a params "
                                              r"file \(65,536\)"):
        load_params(tmp_path / "deep.npz")
    np.savez(tmp_path / "deep.npz", **LINEAR_ARRAYS, __model__=np.array("[" * 5000 + "]" * 5000))
    with pytest.raises(CheckpointError, match="the model description is nested too deeply"):
        load_params(tmp_path / "deep.npz")


@pytest.mark.parametrize("spec, message", [
    ({"name": "mlp", "layer_sizes": [784, 8, 10], "activation": ["x"]}, r"activation is not a name \(\['x'\]\)"),
    ({"name": "linear", "layer_sizes": [784, 10], "activation": {"a": 1}}, "activation is not a name"),
    ({"name": "linear", "layer_sizes": [784, 10], "extra": 1}, r"unknown fields \(\['extra'\]\)"),
    ({"name": "mlp", "layer_sizes": [784, 2**40, 10], "activation": "relu"}, "more than any model here"),
    ({"name": "mlp", "layer_sizes": [784, True, 10], "activation": "relu"}, "has no valid layer sizes"),
    ({"name": "x" * 1000, "layer_sizes": [784, 10]}, r"unknown model 'x{56}\.\.\.; choose one of"),
    ({"name": "mlp", "layer_sizes": list(range(2000))}, r"has no valid layer sizes \(\[0, 1, .{50}\.\.\.\)$"),
])
def test_model_descriptions_of_the_wrong_types_are_one_line(tmp_path, spec, message):
    with pytest.raises(CheckpointError, match=message) as info:
        load_params(_described(tmp_path / "p.npz", spec, LINEAR_ARRAYS))
    assert "\n" not in str(info.value) and len(str(info.value)) < 300


def test_a_huge_model_string_is_refused_from_its_header_before_it_is_read(tmp_path):
    """A 100-million-character `__model__`, compressed to a few hundred KB: refused without reading it."""
    import tracemalloc
    import zipfile

    chars = 100_000_000
    header = {"descr": f"<U{chars}", "fortran_order": False, "shape": ()}
    with zipfile.ZipFile(tmp_path / "big.npz", "w", zipfile.ZIP_DEFLATED) as archive:
        for name, value in LINEAR_ARRAYS.items():
            with archive.open(name + ".npy", "w") as entry:
                np.lib.format.write_array(entry, value)
        with archive.open("__model__.npy", "w", force_zip64=True) as entry:
            np.lib.format.write_array_header_1_0(entry, header)
            block = "x".encode("utf-32-le") * (1 << 20)
            for _ in range(chars // (1 << 20)):
                entry.write(block)
            entry.write("x".encode("utf-32-le") * (chars % (1 << 20)))
    assert (tmp_path / "big.npz").stat().st_size < 2_000_000
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match=r"__model__ holds 400,000,000 bytes, more than it can"):
            load_params(tmp_path / "big.npz")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20_000_000


def test_arrays_that_are_not_numbers_are_refused_from_their_header(tmp_path):
    arrays = {**LINEAR_ARRAYS, "layers/0/b": np.array(["a" * 10] * 10)}
    with pytest.raises(CheckpointError, match=r"layers/0/b does not hold numbers \(dtype <U10\)"):
        load_params(_described(tmp_path / "p.npz", {"name": "linear", "layer_sizes": [784, 10]}, arrays))
    np.savez(tmp_path / "q.npz", **LINEAR_ARRAYS, __model__=np.zeros(3))
    with pytest.raises(CheckpointError, match=r"__model__ is not a string"):
        load_params(tmp_path / "q.npz")


def test_a_fifo_or_a_directory_as_params_is_refused_without_waiting(tmp_path, tiny_data_dir, capsys):
    import os
    import threading

    from jaxlin.cli.main import main

    os.mkfifo(tmp_path / "fifo.npz")
    codes = []
    # In a thread: should the FIFO ever be opened for reading, it would wait for a writer forever.
    worker = threading.Thread(target=lambda: codes.append(
        main(["evaluate", str(tmp_path / "fifo.npz"), "--data-dir", str(tiny_data_dir)])), daemon=True)
    worker.start()
    worker.join(120)
    assert codes == [2]
    assert capsys.readouterr().err == (f"jaxlin: error: {tmp_path / 'fifo.npz'}: not a regular file (a params "
                                       f"file is an .npz written by `jaxlin train`)\n")
    with pytest.raises(CheckpointError, match="is a directory, not a params file"):
        load_params(tmp_path)
