"""The benchmark harness: its NumPy floor computes the same step, and `--quick` runs end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

from bench.common import NextBatch, initial_params, shared_order
from bench.numpy_floor import sgd_step
from jaxlin.models import get_model
from jaxlin.training.trainer import make_update_fn

ROOT = Path(__file__).resolve().parents[1]


def test_next_batch_spans_epochs_like_the_tutorial():
    next_batch = NextBatch(7, seed=0)
    stream = np.concatenate([next_batch(3) for _ in range(7)])  # 21 = three epochs
    for epoch in stream.reshape(3, 7):
        assert sorted(epoch.tolist()) == list(range(7))
    assert shared_order(7, 3, 7).ravel().tolist() == stream.tolist()


def test_the_contenders_accuracy_is_jaxlins_evaluation(tiny_data):
    import jax

    from bench.jax_contenders import make_accuracy_fn
    from jaxlin.training.evaluate import evaluate

    model = get_model("mlp", hidden_sizes=(8,))
    params = model.init(jax.random.key(0))
    accuracy = make_accuracy_fn(model.apply, tiny_data.test.images_uint8, tiny_data.test.labels)
    assert accuracy(params) == evaluate(model.apply, params, tiny_data.test)["accuracy"]


def test_numpy_floor_takes_the_same_step_as_jaxlin():
    rng = np.random.default_rng(0)
    images = rng.random((32, 784), np.float32)
    labels = rng.integers(0, 10, 32)
    for name in ("linear", "mlp"):
        params = initial_params(name)
        if name == "linear":  # a non-zero start exercises every term
            params = [(rng.normal(size=w.shape).astype(np.float32) * 0.01, b + 0.1) for w, b in params]
        floor = [(w.copy(), b.copy()) for w, b in params]
        sgd_step(floor, images, labels, 0.1)
        model, optimizer = get_model(name, hidden_sizes=(256,)), optax.sgd(0.1)
        jax_params = [{"w": w, "b": b} for w, b in params]
        new, _, _ = make_update_fn(model.apply, optimizer)(jax_params, optimizer.init(jax_params), images, labels)
        for (w, b), layer in zip(floor, new):
            np.testing.assert_allclose(w, layer["w"], rtol=1e-4, atol=1e-6)
            np.testing.assert_allclose(b, layer["b"], rtol=1e-4, atol=1e-6)


def test_quick_benchmark_runs_end_to_end(mnist_dir, tmp_path):
    done = subprocess.run([sys.executable, "-m", "bench", "--quick", "--data-dir", str(mnist_dir),
                           "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "cpu-quick.json").read_text())
    assert (tmp_path / "cpu-quick.png").read_bytes()[:4] == b"\x89PNG"
    statuses = {name: c["status"] for name, c in results["contenders"].items()}
    assert statuses["jaxlin_fused"] == statuses["jaxlin_per_step"] == statuses["numpy_floor"] == "ok"
    assert set(statuses.values()) <= {"ok", "skipped"}
    ran = {r["contender"] for r in results["throughput"] if r["status"] == "ok"}
    assert ran == {name for name, status in statuses.items() if status == "ok"}
    for row in results["throughput"]:
        if row["status"] == "skipped":  # a contender that does not build the case's model
            assert (row["contender"], row["model"]) in {("tf_reference", "cnn"), ("numpy_floor", "cnn")}, row
            continue
        assert len(row["repeats_seconds"]) == 2 and row["median_us_per_step"] > 0
    cnn = {r["contender"]: r for r in results["throughput"] if r["model"] == "cnn" and r["status"] == "ok"}
    assert {"jaxlin_fused", "jaxlin_per_step"} <= set(cnn)
    assert {n for n in ("tf2_function", "tf2_xla", "torch_eager") if statuses[n] == "ok"} <= set(cnn)
    for row in cnn.values():  # the same FLOPs per step for every framework: the same network
        assert row["flops_per_step"] == cnn["jaxlin_fused"]["flops_per_step"] > 1e9 and row["gflops"] > 0
    assert {r["contender"] for r in results["time_to_accuracy"]} >= {"jaxlin_fused", "jaxlin_per_step"}
    assert "jaxlin fused" in done.stdout and "us/step" in done.stdout
    assert results["peak"]["peak_gflops"] > 0 and "xla" in results["peak"]["by_source"]
    sweep = [r for r in results["throughput"] if r["contender"] == "jaxlin_sweep"]
    assert [r["num_models"] for r in sweep] == results["meta"]["plan"]["num_models"]
    fused = next(r for r in results["throughput"] if r["contender"] == "jaxlin_fused" and r["model"] == "linear")
    assert fused["flops_per_step"] > 3e6 and 0 < fused["fraction_of_peak"] < 1
    assert "% peak" in done.stdout and "sweep model-steps/s" in done.stdout
    _check_steady_state(results, done.stdout)


def _check_steady_state(results: dict, stdout: str) -> None:
    """The quick plan's `jaxlin train` steady-state section: every command ran as asked (its lengths, its
    evaluations, no checkpoints for the bare loop), one row per model and long length, ratios positive where
    taken (a quick run's differences are mostly start-up noise, so their sign is not asserted)."""
    lengths = {model: tuple(steps) for model, steps in results["meta"]["plan"]["steady_lengths"]}
    assert lengths == {"linear": (20, 200, 400), "mlp": (20, 100), "cnn": (2, 6)}
    steady = results["train_steady_state"]
    runs = {(r["model"], r["mode"], r["num_steps"]): r for r in steady["runs"]}
    assert set(runs) == {(m, mode, n) for m, steps in lengths.items() for mode in ("default", "bare") for n in steps}
    for (model, mode, steps), run in runs.items():
        assert run["status"] == "ok" and len(run["seconds"]) == 1 and run["median_seconds"] > 0, run
        assert run["num_steps_trained"] == steps and f"--num-steps {steps} " in run["command"]
        assert ("--model mlp --learning-rate 0.1" in run["command"]) == (model == "mlp")
        assert ("--model cnn --learning-rate 0.1" in run["command"]) == (model == "cnn")
        if mode == "bare":
            assert f"--eval-every {steps} --checkpoint-every 0" in run["command"] and run["checkpoints"] == []
            assert run["evaluations"] <= runs[(model, "default", steps)]["evaluations"]
        else:
            assert "--eval-every" not in run["command"] and "--checkpoint-every" not in run["command"]
    rows = steady["rows"]
    assert [(r["model"], r["num_steps"], r["short_steps"]) for r in rows] == [
        ("linear", 200, 20), ("linear", 400, 20), ("mlp", 100, 20), ("cnn", 6, 2)]
    for row in rows:
        assert row["status"] == "ok"
        assert np.isfinite(row["default_us_per_step"]) and np.isfinite(row["bare_us_per_step"])
        assert row["jaxlin_fused_us_per_step"] > 0
        for key in ("default_vs_bare", "speedup_vs_tf_reference", "speedup_vs_torch_eager", "default_vs_jaxlin_fused"):
            assert row[key] is None or row[key] > 0
    assert "jaxlin train, steady state per step" in stdout and "| linear | 400 (20) |" in stdout


def _steady_run(model, mode, steps, seconds):
    return {"model": model, "mode": mode, "num_steps": steps, "status": "ok", "median_seconds": seconds}


def test_steady_state_is_long_minus_short_with_its_ratios_and_targets():
    from bench.report import failures, markdown, steady_state_targets
    from bench.runner import log_steady_rows, steady_rows

    lengths = [("linear", (1000, 21000, 100000)), ("mlp", (1000, 21000))]
    runs = [_steady_run("linear", "default", 1000, 2.0), _steady_run("linear", "default", 21000, 4.4),
            _steady_run("linear", "default", 100000, 12.0), _steady_run("linear", "bare", 1000, 1.8),
            _steady_run("linear", "bare", 21000, 3.8), _steady_run("linear", "bare", 100000, 10.4),
            _steady_run("mlp", "default", 1000, 3.0), _steady_run("mlp", "default", 21000, 2.9),
            _steady_run("mlp", "bare", 1000, 2.5)]
    throughput = [{"contender": "tf_reference", "model": "linear", "batch_size": 100, "status": "ok",
                   "median_us_per_step": 500.0},
                  {"contender": "jaxlin_fused", "model": "linear", "batch_size": 100, "status": "ok",
                   "median_us_per_step": 100.0},
                  {"contender": "jaxlin_fused", "model": "linear", "batch_size": 100, "status": "ok", "sweep": True,
                   "median_us_per_step": 1.0}]  # the sweep's rows are not the fused loop's defaults
    rows = steady_rows(runs, throughput, lengths)
    assert [(r["model"], r["num_steps"], r["status"]) for r in rows] == [
        ("linear", 21000, "ok"), ("linear", 100000, "ok"), ("mlp", 21000, "failed")]
    first, second = rows[0], rows[1]
    assert first["default_us_per_step"] == pytest.approx(120.0) and first["bare_us_per_step"] == pytest.approx(100.0)
    assert first["default_vs_bare"] == pytest.approx(1.2)
    assert first["speedup_vs_tf_reference"] == pytest.approx(500 / 120)
    assert first["default_vs_jaxlin_fused"] == pytest.approx(1.2) and first["bare_speedup_vs_tf_reference"] \
        == pytest.approx(5.0)
    assert second["default_us_per_step"] == pytest.approx(1e6 * 10.0 / 99000)
    assert rows[2]["reason"] == "not run"  # its bare 21,000-step run is missing
    targets = steady_state_targets({"train_steady_state": {"rows": rows}})
    assert targets["train_steady_state_linear_21000_default_vs_bare"] == {
        "ratio": pytest.approx(1.2), "goal": 1.25, "met": True}
    assert targets["train_steady_state_linear_100000_default_vs_bare"]["goal"] == 1.1
    assert targets["train_steady_state_linear_100000_default_vs_bare"]["met"] is False  # 10 / 8.6
    assert targets["train_steady_state_linear_21000_speedup_vs_tf_reference"]["met"] is True
    assert not any(key.startswith("train_steady_state_mlp") for key in targets)
    # a long run no slower than the short one (noise): the numbers are kept, no ratio is taken of them
    noisy = steady_rows([_steady_run("mlp", "default", 1000, 3.0), _steady_run("mlp", "default", 21000, 2.9),
                         _steady_run("mlp", "bare", 1000, 2.5), _steady_run("mlp", "bare", 21000, 4.5)], [],
                        [("mlp", (1000, 21000))])
    assert noisy[0]["default_us_per_step"] < 0 and noisy[0]["default_vs_bare"] is None and "noise" in noisy[0]["note"]
    logged = []
    log_steady_rows(rows + noisy, logged.append)
    assert len(logged) == 4 and "default/bare 1.20, TF reference / default 4.17" in logged[0]
    assert "failed: not run" in logged[2] and "noise" in logged[3]
    results = {"meta": {"plan": {}}, "contenders": {}, "throughput": [],
               "train_steady_state": {"flags": {"linear": [], "mlp": ["--model", "mlp"]}, "repeats": 3, "rows": rows,
                                      "runs": [{"model": "mlp", "mode": "bare", "num_steps": 21000,
                                                "status": "failed", "reason": "boom\nmore"}]}}
    assert failures(results) == ["train steady state mlp bare 21000 steps: boom"]
    text = markdown(results)
    assert ("| linear | 21,000 (1,000) | 120.0 | 100.0 | 1.20 | <= 1.25 | 500.0 | 4.17 | - | - | - | 100.0 | 1.20 |"
            ) in text
    assert "linear: the defaults, mlp: --model mlp" in text


def test_the_cnn_steady_state_is_compared_to_pytorch_eager_and_the_faster_tf2_loop():
    from bench.report import markdown, steady_state_targets
    from bench.runner import log_steady_rows, steady_rows

    runs = [_steady_run("cnn", "default", 10, 3.0), _steady_run("cnn", "default", 60, 8.0),
            _steady_run("cnn", "bare", 10, 2.0), _steady_run("cnn", "bare", 60, 6.0)]
    throughput = [{"contender": name, "model": "cnn", "batch_size": 100, "status": "ok", "median_us_per_step": us}
                  for name, us in (("torch_eager", 50_000.0), ("tf2_function", 125_000.0), ("tf2_xla", 80_000.0))]
    throughput += [{"contender": "torch_eager", "model": "cnn", "batch_size": 1000, "status": "ok",
                    "median_us_per_step": 1.0},  # another batch size: not what jaxlin train runs
                   {"contender": "tf_reference", "model": "cnn", "batch_size": 100, "status": "skipped",
                    "reason": "it builds only the linear and mlp models"}]
    [row] = steady_rows(runs, throughput, [("cnn", (10, 60))])
    assert row["default_us_per_step"] == pytest.approx(100_000.0) and row["bare_us_per_step"] == pytest.approx(80_000)
    assert row["speedup_vs_torch_eager"] == pytest.approx(0.5) and row["bare_speedup_vs_torch_eager"] == \
        pytest.approx(0.625)
    assert row["best_tf2"] == "tf2_xla" and row["speedup_vs_best_tf2"] == pytest.approx(0.8)
    assert row["tf_reference_us_per_step"] is None and row["speedup_vs_tf_reference"] is None
    targets = steady_state_targets({"train_steady_state": {"rows": [row]}})
    assert targets == {"train_steady_state_cnn_60_speedup_vs_torch_eager": {
        "ratio": pytest.approx(0.5), "goal": 1.0, "met": False}}  # no default/bare goal for the CNN's short runs
    logged = []
    log_steady_rows([row], logged.append)
    assert "PyTorch eager / default 0.50, tf2_xla / default 0.80" in logged[0]
    results = {"meta": {"plan": {}}, "contenders": {}, "throughput": [],
               "train_steady_state": {"flags": {"cnn": ["--model", "cnn", "--learning-rate", "0.1"]}, "repeats": 3,
                                      "rows": [row], "runs": runs}}
    assert "| cnn | 60 (10) | 100,000.0 | 80,000.0 | 1.25 | - | - | - | 50,000.0 | 0.50 | 0.80 | - | - |" \
        in markdown(results)


def test_the_cnn_is_trained_by_tf2_pytorch_and_jaxlin_and_the_others_sit_out_with_their_reason():
    from bench.common import not_run_reason, runs_model
    from bench.report import failures, markdown, table
    from bench.runner import Plan, add_flops, throughput

    assert all(runs_model(name, "cnn") for name in ("tf2_function", "tf2_xla", "torch_eager", "jaxlin_fused"))
    assert not runs_model("tf_reference", "cnn") and not runs_model("numpy_floor", "cnn")
    assert runs_model("tf_reference", "mlp") and not runs_model("torch_eager", "mine:Net")
    assert not_run_reason("numpy_floor", "cnn") == "it builds only the linear and mlp models"
    assert "user's model" in not_run_reason("torch_eager", "mine:Net")

    class Timer:
        def __init__(self):
            self.asked = []

        def ask(self, op, **kwargs):
            self.asked.append((op, kwargs.get("model")))
            return {"seconds": 0.5, "loss": 2.0} if op == "run" else {"flops_per_step": 2e9} if op == "flops" else {}

    workers = {name: Timer() for name in ("tf_reference", "torch_eager", "jaxlin_fused", "numpy_floor")}
    plan = Plan(repeats=2, cases=[("cnn", 100, 5)], sweep=[], sweep_steps=0, num_models=[], device_counts=[],
                vmap_steps=0, tta_repeats=0, tta_eval_every=1, tta_max_steps=1, tta_target=0.5)
    logged = []
    rows = throughput(workers, plan, logged.append)
    add_flops(workers, rows, 100.0, logged.append)
    status = {r["contender"]: r["status"] for r in rows}
    assert status == {"tf_reference": "skipped", "numpy_floor": "skipped", "torch_eager": "ok", "jaxlin_fused": "ok"}
    assert ("setup", "cnn") not in workers["tf_reference"].asked + workers["numpy_floor"].asked
    assert "  tf_reference: not run for cnn (it builds only the linear and mlp models)" in logged
    torch = next(r for r in rows if r["contender"] == "torch_eager")
    assert torch["gflops"] == pytest.approx(2e9 * 10 / 1e9) and torch["fraction_of_peak"] == pytest.approx(0.2)
    peak = {"peak_gflops": 100.0, "by_source": {"xla": {"gflops": 100.0, "size": 2048}}}
    results = {"meta": {"plan": {}}, "contenders": {}, "peak": peak, "throughput": rows}
    assert failures(results) == []
    for text in (table(results), markdown(results)):
        assert "cnn, batch 100, 5 steps" in text and "| PyTorch eager | 100,000.0 |" in text
        assert "| 20.0 | 20% |" in text
        assert "not run: TF reference (v1 graph, feed_dict) (it builds only the linear and mlp models); " \
               "NumPy/BLAS floor (it builds only the linear and mlp models)" in text


def test_the_shared_cnn_start_is_jaxlins_cnn_in_numpy():
    """bench.common restates jaxlin's CNN without JAX: the same pytree, shapes and He-normal scale, and
    jaxlin's apply runs on it."""
    from bench.common import cnn_shapes, shared_params

    model = get_model("cnn")
    own = model.init(jax.random.key(0))
    shared = shared_params("cnn")
    assert jax.tree.structure(own) == jax.tree.structure(shared)
    assert [x.shape for x in jax.tree.leaves(own)] == [x.shape for x in jax.tree.leaves(shared)]
    assert [w for w, _ in cnn_shapes()] == [shared[name]["w"].shape for name in ("conv1", "conv2", "dense", "out")]
    for layer in shared.values():
        fan_in = np.prod(layer["w"].shape[:-1])
        assert layer["w"].dtype == np.float32 and not layer["b"].any()
        assert layer["w"].std() == pytest.approx(np.sqrt(2.0 / fan_in), rel=0.1)
    assert model.apply(shared, np.zeros((2, 784), np.float32)).shape == (2, 10)
    again = shared_params("cnn")
    assert all((a == b).all() for a, b in zip(jax.tree.leaves(shared), jax.tree.leaves(again)))
    with pytest.raises(ValueError, match="no shared starting params for model 'mine:Net'"):
        shared_params("mine:Net")


def _jaxlin_cnn_losses(data, order):
    """jaxlin's CNN from the shared start, the bench's SGD, one step per row of `order`: each step's loss."""
    from bench.common import learning_rate, shared_params
    from jaxlin.training.trainer import make_train_step

    model, optimizer = get_model("cnn"), optax.sgd(learning_rate("cnn"))
    params = jax.tree.map(jax.numpy.asarray, shared_params("cnn"))
    opt_state, step, losses = optimizer.init(params), make_train_step(model.apply, optimizer), []
    for indices in order:
        params, opt_state, loss = step(params, opt_state, data["train_images"][indices], data["train_labels"][indices])
        losses.append(float(loss))
    return losses


@pytest.mark.parametrize("framework", ["torch", "tensorflow"])
def test_the_cnn_trains_alike_in_pytorch_tf2_and_jaxlin(framework, tiny_data_dir):
    """Three SGD steps from the shared start on the same batches give the same losses (to 1e-3) in the
    contender's own network and step (PyTorch NCHW, TF2 NHWC) as in jaxlin: the rows time the same work."""
    pytest.importorskip(framework)
    from bench.common import load_data

    data = load_data(str(tiny_data_dir))
    order = shared_order(len(data["train_labels"]), 100, 3, seed=3)
    if framework == "torch":
        import torch

        from bench.torch_eager import TorchEager

        contender = TorchEager(data)
        net, optimizer = contender._net("cnn")
        losses = [contender._step(net, optimizer, torch.from_numpy(indices.astype(np.int64))).item()
                  for indices in order]
    else:
        import tensorflow as tf

        from bench.tf2_loop import Tf2Loop

        _, train_chunk = Tf2Loop(data)._build("cnn", 100)
        losses = [float(train_chunk(tf.constant(order.ravel()), tf.constant(100 * i), tf.constant(1)))
                  for i in range(len(order))]
    expected = _jaxlin_cnn_losses(data, order)
    assert len(set(expected)) == 3  # each step moved the params: a wrong update would show
    np.testing.assert_allclose(losses, expected, atol=1e-3, rtol=0)


def test_only_train_steady_state_times_those_rows_and_what_they_are_compared_to(tiny_data_dir, tmp_path,
                                                                                 monkeypatch, capsys):
    import bench.__main__ as cli

    seen = {}

    def run(plan, data_dir, names, **kwargs):
        seen.update(plan=plan, names=names)
        return {"meta": {"plan": {}, "cpu_model": "cpu", "cpu_count": 2}, "contenders": {}, "peak": {},
                "throughput": [], "time_to_accuracy": [], "end_to_end": [],
                "train_steady_state": {"runs": [], "rows": []}}

    monkeypatch.setattr(cli.runner, "run", run)
    assert cli.main(["--data-dir", str(tiny_data_dir), "--out", str(tmp_path), "--only", "train_steady_state"]) == 0
    plan = seen["plan"]
    assert seen["names"] == ["tf_reference", "torch_eager", "jaxlin_fused"]
    assert plan.cases == [("linear", 100, 1000), ("mlp", 100, 500), ("cnn", 100, 20)] and plan.steady_repeats == 3
    assert plan.steady_lengths == [("linear", (1000, 21000, 100000)), ("mlp", (1000, 21000)), ("cnn", (10, 310))]
    assert (plan.sweep, plan.num_models, plan.device_counts, plan.tta_repeats, plan.e2e_repeats, plan.peak) == \
        ([], [], [], 0, 0, False)
    assert cli.main(["--data-dir", str(tiny_data_dir), "--out", str(tmp_path), "--only", "train_steady_state",
                     "--contenders", "jaxlin_fused", "--quick", "--steady-repeats", "5"]) == 0
    assert seen["names"] == ["jaxlin_fused"] and seen["plan"].steady_lengths[0] == ("linear", (20, 200, 400))
    assert seen["plan"].steady_repeats == 5
    assert cli.main(["--data-dir", str(tiny_data_dir), "--out", str(tmp_path), "--no-steady-state"]) == 0
    assert seen["plan"].steady_repeats == 0 and seen["plan"].e2e_repeats == 5
    capsys.readouterr()


def test_tensorflow_and_pytorch_workers_never_import_jax(mnist_dir):
    """What a TF or PyTorch worker imports (its contender module, the shared harness, the data) must
    not load JAX: the two in one process would fight over a GPU."""
    script = f"""
import importlib, sys
from bench.worker import CONTENDERS
from bench.common import load_data
load_data({str(mnist_dir)!r})
loaded = []
for module, _, framework in CONTENDERS.values():
    if framework == "jax":
        continue
    try:
        importlib.import_module(module)
        loaded.append(module)
    except ImportError:
        pass
print(",".join(loaded))
print(sorted({{m.split(".")[0] for m in sys.modules}} & {{"jax", "jaxlib", "optax", "orbax"}}))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert done.returncode == 0, done.stderr[-2000:]
    loaded, jax_modules = done.stdout.strip().splitlines()[-2:]
    assert "bench.numpy_floor" in loaded
    assert jax_modules == "[]", f"{loaded} imported {jax_modules}"


class _FailingWorker:
    def __init__(self, fail_on: str):
        self.fail_on = fail_on

    def ask(self, op, variant=None, **kwargs):
        if op == "run" and variant == self.fail_on:
            raise RuntimeError("run: boom")
        return {"seconds": 0.01, "loss": 0.0} if op == "run" else {}


def test_a_failed_run_is_recorded_and_the_others_go_on():
    from bench.runner import interleaved

    workers = {"a": _FailingWorker("bad")}
    setups = [("a", "bad", {"model": "linear", "batch_size": 10, "num_steps": 5}),
              ("a", "good", {"model": "linear", "batch_size": 10, "num_steps": 5})]
    rows = interleaved(workers, setups, repeats=3, log=lambda line: None)
    assert rows[0]["status"] == "failed" and "boom" in rows[0]["reason"]
    assert rows[1]["status"] == "ok" and len(rows[1]["repeats_seconds"]) == 3


class _FailingSetup(_FailingWorker):
    def ask(self, op, variant=None, **kwargs):
        if op == "setup" and variant == self.fail_on:
            raise RuntimeError("a setup: TypeError: bad dtype\nmore detail")
        return super().ask(op, variant, **kwargs)


def test_a_failed_setup_is_logged_in_one_line():
    from bench.runner import interleaved

    logged = []
    setups = [("a", "bad", {"model": "m:N", "batch_size": 10, "num_steps": 5})]
    rows = interleaved({"a": _FailingSetup("bad")}, setups, repeats=2, log=logged.append)
    assert rows[0]["status"] == "failed" and "bad dtype" in rows[0]["reason"]
    assert [line.split() for line in logged] == [["a", "bad", "failed:", "a", "setup:", "TypeError:", "bad", "dtype"]]


def test_benchmark_rejects_a_bad_data_dir(tmp_path):
    done = subprocess.run([sys.executable, "-m", "bench", "--quick", "--data-dir", str(tmp_path / "none"),
                           "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "does not exist" in done.stderr
    assert not (tmp_path / "out").exists()


BEGIN = "<!-- begin: generated by python -m bench --replot bench/results/cpu.json -->"
END = "<!-- end: generated -->"


def _replot(results, docs):
    return subprocess.run([sys.executable, "-m", "bench", "--replot", str(results), "--docs", str(docs)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_replot_fills_the_generated_part_of_the_docs_and_nothing_else(tmp_path):
    results = tmp_path / "cpu.json"
    results.write_bytes((ROOT / "bench" / "results" / "cpu.json").read_bytes())
    fused = next(r for r in json.loads(results.read_text())["throughput"]
                 if r["contender"] == "jaxlin_fused" and r["variant"] == "linear-b100")
    before = f"# Title\n\nProse with a | pipe.\r\n\n{BEGIN}\n"
    after = f"{END}\n\n![chart](x.png)\n\nMore prose, no final newline."
    docs = tmp_path / "benchmark.md"
    docs.write_bytes(f"{before}stale tables\n{after}".encode())
    done = _replot(results, docs)
    assert done.returncode == 0, done.stderr[-3000:]
    text = docs.read_bytes().decode()
    assert text.startswith(before) and text.endswith(after)
    generated = text[len(before):-len(after)]
    assert "stale tables" not in generated
    assert f"| jaxlin fused | {fused['median_us_per_step']:,.1f} |" in generated
    assert "linear, batch 100, 1000 steps, median of 5" in generated and "every case:" in generated
    for caption in ("fused sweep", "M linear models at once", "data parallel", "time to 91.8%", "end to end"):
        assert caption in generated
    assert "  jaxlin_fused" not in generated  # no console dump
    assert not list(tmp_path.glob(".benchmark.md.*"))  # the temporary file was renamed
    assert _replot(results, docs).returncode == 0 and docs.read_bytes().decode() == text  # idempotent


def test_replot_refuses_a_docs_file_without_the_markers(tmp_path):
    results = tmp_path / "cpu.json"
    original = (ROOT / "bench" / "results" / "cpu.json").read_bytes()
    results.write_bytes(original)
    for name, text in [("none.md", "# Benchmark\n\nno markers here\n"), ("begin-only.md", f"{BEGIN}\n"),
                       ("reversed.md", f"{END}\n{BEGIN}\n")]:
        docs = tmp_path / name
        docs.write_text(text)
        done = _replot(results, docs)
        assert done.returncode == 2, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and str(docs) in done.stderr
        assert docs.read_text() == text
    assert results.read_bytes() == original and not results.with_suffix(".png").exists()  # nothing written


def test_replot_by_default_writes_the_docs_only_from_the_results_its_marker_names(tmp_path, monkeypatch, capsys):
    import bench.__main__ as cli

    monkeypatch.setattr(cli, "ROOT", tmp_path)
    monkeypatch.setattr(cli, "DOCS", tmp_path / "benchmark.md")
    text = f"prose\n{BEGIN}\n{END}\n"
    cli.DOCS.write_text(text)
    named = tmp_path / "bench" / "results" / "cpu.json"
    named.parent.mkdir(parents=True)
    other = tmp_path / "nvidia-h200.json"
    for path in (named, other):
        path.write_bytes((ROOT / "bench" / "results" / "cpu.json").read_bytes())
    assert cli.replot(other) == 0
    assert cli.DOCS.read_text() == text and "left" in capsys.readouterr().out
    assert cli.replot(named) == 0
    generated = cli.DOCS.read_text()
    assert generated.startswith(f"prose\n{BEGIN}\n") and "| jaxlin fused |" in generated


# A user's model for `--cases MODULE:NAME:BATCH:STEPS`, written into a temporary working directory.
USER_MODEL = '''
import jax
import jax.numpy as jnp


class TinyNet:
    def __init__(self, image_shape, num_classes):
        self.inputs, self.num_classes = image_shape[0] * image_shape[1] * image_shape[2], num_classes

    def init(self, key):
        return {"w": jax.random.normal(key, (self.inputs, self.num_classes)) * 0.01, "b": jnp.zeros(self.num_classes)}

    def apply(self, params, images):
        return images @ params["w"] + params["b"]
'''
LIGHT = ["--repeats", "1", "--no-sweep", "--no-vmap", "--no-tta", "--no-e2e", "--no-steady-state"]


def _bench_in(cwd: Path, *argv: str) -> subprocess.CompletedProcess:
    """`python -m bench` run from `cwd` (not the repository): the installed bench, the user's module from there."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-m", "bench", *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**env, "TF_CPP_MIN_LOG_LEVEL": "2"})


def test_a_case_is_read_from_the_right_so_a_users_model_may_hold_a_colon():
    from bench.__main__ import parse_case

    assert parse_case("linear:100:1000") == ("linear", 100, 1000)
    assert parse_case(" mymodels:TinyMLP:50:5") == ("mymodels:TinyMLP", 50, 5)
    assert parse_case("pkg.models:nets.Small:1:2") == ("pkg.models:nets.Small", 1, 2)
    for bad, reason in [("linear:100", "expected MODEL:BATCH:STEPS"), ("mymodels:TinyMLP:x:5", "whole numbers"),
                        ("resnet:100:5", "unknown model 'resnet'"), ("linear:0:5", "at least 1"),
                        ("a:b:c:1:2", "unknown model 'a:b:c'")]:
        with pytest.raises(ValueError, match=reason):
            parse_case(bad)


TRAINING_MODE_MODELS = USER_MODEL + """

class WithDropout(TinyNet):
    def train_apply(self, params, images, key):
        keep = jax.random.bernoulli(key, 0.5, images.shape)
        return self.apply(params, images * keep * 2.0), params


class WithCounter(TinyNet):
    \"\"\"Batch-norm-like: a leaf the training mode updates and the optimizer must not touch.\"\"\"

    def init(self, key):
        return {**super().init(key), "seen": jnp.zeros(())}

    def apply(self, params, images):
        return images @ params["w"] + params["b"]

    def trainable(self, params):
        return {"w": True, "b": True, "seen": False}

    def train_apply(self, params, images, key):
        return self.apply(params, images), {**params, "seen": params["seen"] + images.shape[0]}
"""


@pytest.mark.parametrize("contender", ["JaxlinPerStep", "JaxlinFused"])
def test_the_jaxlin_contenders_time_a_model_with_a_training_mode(contender, tiny_data_dir, tmp_path, monkeypatch):
    """Dropout and batch-norm-like state are timed as jaxlin train trains them (step number and dropout
    key threaded, the optimizer on the trained leaves only), and the user's models pass the bench's check."""
    import bench.jax_contenders as contenders
    from bench.__main__ import check_user_models
    from bench.common import load_data

    (tmp_path / "modenets.py").write_text(TRAINING_MODE_MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    check_user_models([("modenets:WithDropout", 50, 4), ("modenets:WithCounter", 50, 4)])
    data = load_data(str(tiny_data_dir))
    for model in ("modenets:WithDropout", "modenets:WithCounter"):
        timer = getattr(contenders, contender)(data)
        setup = timer.setup(model=model, batch_size=50, num_steps=4)
        reply = timer.run()
        assert setup["compile_seconds"] > 0 and reply["seconds"] > 0 and np.isfinite(reply["loss"])
    counter = contenders.JaxlinPerStep(data)
    params, opt_state = counter._start("modenets:WithCounter")
    params, _ = counter._train_on_order(np.zeros((3, 50), np.int32), params, opt_state)
    assert float(params["seen"]) == 150.0  # the training mode's update, untouched by the optimizer
    with pytest.raises(ValueError, match="JaxlinVmap does not time a model with a training mode"):
        contenders.JaxlinVmap(data).setup(model="modenets:WithDropout", batch_size=50, num_steps=4)


def test_a_case_is_checked_as_jaxlin_train_checks_it(tmp_path, monkeypatch):
    """A batch larger than the training set, or an optimizer whose update cannot train the case's model, is
    refused before any worker starts, as `jaxlin train` refuses them (not timed as if it trained)."""
    from bench.__main__ import check_cases_train
    from jaxlin.errors import ConfigError

    (tmp_path / "badopt.py").write_text("""
import jax
import optax


def make(learning_rate):
    def update(updates, state, params=None):
        return jax.tree.map(lambda u: u[..., :1], updates), state
    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)
""")
    monkeypatch.syspath_prepend(str(tmp_path))
    check_cases_train([("linear", 100, 5)], None, None)
    check_cases_train([("linear", 100, 5)], "adam", 0.001)
    with pytest.raises(ConfigError, match="batch size 100,000 is larger than the training set"):
        check_cases_train([("linear", 100_000, 5)], None, None)
    with pytest.raises(ConfigError, match=r"--optimizer badopt:make \(case linear\): its update returns"):
        check_cases_train([("linear", 100, 5)], "badopt:make", 0.1)


@pytest.mark.slow
def test_a_bad_case_or_optimizer_is_one_line_and_writes_nothing(tiny_data_dir, tmp_path):
    for argv, message in [(["--cases", "nomodule:Net:50:5"], "--cases: --model nomodule:Net: cannot import nomodule"),
                          (["--cases", "linear:50"], "--cases: expected MODEL:BATCH:STEPS"),
                          (["--optimizer", "nosuch"], "unknown optimizer 'nosuch'"),
                          (["--learning-rate", "-1"], "learning rate must be a finite number > 0")]:
        done = _bench_in(tmp_path, "--data-dir", str(tiny_data_dir), *argv)
        error = done.stderr.strip().splitlines()[-1]
        assert done.returncode == 2 and error.startswith("python -m bench: error: ") and message in error, done.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_a_users_model_is_timed_from_its_own_directory_into_the_default_out_there(tiny_data_dir, tmp_path):
    (tmp_path / "mynets.py").write_text(USER_MODEL)
    done = _bench_in(tmp_path, "--data-dir", str(tiny_data_dir), "--cases", "mynets:TinyNet:50:5,linear:50:5",
                     "--contenders", "jaxlin_fused,numpy_floor", *LIGHT)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "jaxlin-bench" / "cpu.json").read_text())
    ran = {(r["contender"], r["model"]) for r in results["throughput"] if r["status"] == "ok"}
    assert ran == {("jaxlin_fused", "mynets:TinyNet"), ("jaxlin_fused", "linear"), ("numpy_floor", "linear")}
    assert "numpy_floor: not run for mynets:TinyNet" in done.stderr
    assert "mynets:TinyNet, batch 50, 5 steps" in done.stdout and results["meta"]["plan"]["optimizer"] is None


@pytest.mark.slow
def test_another_optimizer_times_the_jaxlin_contenders_and_the_others_sit_out(tiny_data_dir, tmp_path, monkeypatch):
    """Also: with no --data-dir nor JAXLIN_DATA_DIR, the data comes from jaxlin's download cache."""
    import shutil

    monkeypatch.delenv("JAXLIN_DATA_DIR", raising=False)
    monkeypatch.setenv("JAXLIN_CACHE_DIR", str(tmp_path / "cache"))
    none = _bench_in(tmp_path, "--cases", "mlp:50:5")
    assert none.returncode == 2 and "no data: pass --data-dir, set JAXLIN_DATA_DIR, or run `jaxlin download`" \
        in none.stderr
    shutil.copytree(tiny_data_dir, tmp_path / "cache" / "mnist")
    done = _bench_in(tmp_path, "--cases", "mlp:50:5", "--optimizer", "adam", "--learning-rate", "0.001",
                     "--contenders", "jaxlin_per_step,numpy_floor", "--out", "here", *LIGHT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "here" / "cpu.json").read_text())["meta"]["data_dir"].endswith("cache/mnist")
    results = json.loads((tmp_path / "here" / "cpu.json").read_text())
    assert results["contenders"]["numpy_floor"]["status"] == "skipped"
    assert "tutorial's SGD" in results["contenders"]["numpy_floor"]["reason"]
    row = next(r for r in results["throughput"] if r["contender"] == "jaxlin_per_step")
    assert row["status"] == "ok" and (results["meta"]["plan"]["optimizer"], results["meta"]["plan"]["learning_rate"]) \
        == ("adam", 0.001)
    assert "optimizer: adam, learning rate 0.001" in done.stdout


def test_the_jax_contenders_train_with_the_optimizer_they_are_given(tiny_data_dir):
    from bench.common import load_data
    from bench.jax_contenders import JaxlinPerStep

    data = load_data(str(tiny_data_dir))
    _, sgd_state = JaxlinPerStep(data)._start("linear")
    contender = JaxlinPerStep(data, optimizer="adam", learning_rate=0.001)
    _, adam_state = contender._start("linear")
    kinds = lambda state: {type(s).__name__ for s in jax.tree.leaves(state, is_leaf=lambda x: hasattr(x, "_fields"))}
    assert "ScaleByAdamState" in kinds(adam_state) and "ScaleByAdamState" not in kinds(sgd_state)
    assert contender._model_key == ("linear", "adam", 0.001)


def _results_with_a_failed_case() -> dict:
    """What runner.run returns when a user's model fails in its worker: nothing timed, the row failed."""
    reason = "jaxlin_fused setup: ValueError: Incompatible shapes for broadcasting\nTraceback line two"
    return {"meta": {"plan": {"tta_target": 0.918}, "cpu_model": "cpu", "cpu_count": 2},
            "contenders": {"jaxlin_fused": {"status": "ok", "info": {"device_kind": "cpu"}}},
            "peak": {"peak_gflops": None},
            "throughput": [{"contender": "jaxlin_fused", "variant": "mine:Short-b50", "model": "mine:Short",
                            "batch_size": 50, "num_steps": 20, "status": "failed", "reason": reason}],
            "time_to_accuracy": [], "end_to_end": []}


def test_a_failed_case_is_one_line_on_stderr_the_chart_is_drawn_and_the_exit_status_is_1(
        tiny_data_dir, tmp_path, monkeypatch, capsys):
    import bench.__main__ as cli

    monkeypatch.setattr(cli.runner, "run", lambda *args, **kwargs: _results_with_a_failed_case())
    code = cli.main(["--data-dir", str(tiny_data_dir), "--contenders", "jaxlin_fused", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1
    assert (tmp_path / "cpu.json").exists() and (tmp_path / "cpu.png").read_bytes()[:4] == b"\x89PNG"
    failed = [line for line in err.splitlines() if line.startswith("python -m bench: failed: ")]
    assert failed == ["python -m bench: failed: jaxlin_fused, mine:Short, batch 50, 20 steps: "
                      "jaxlin_fused setup: ValueError: Incompatible shapes for broadcasting"]
    assert "exit status 1" in err
    ok = _results_with_a_failed_case()
    ok["throughput"][0].update(status="ok", repeats_seconds=[0.1], median_us_per_step=1.0, min_us_per_step=1.0,
                               max_us_per_step=1.0, steps_per_second=1.0, examples_per_second=1.0)
    monkeypatch.setattr(cli.runner, "run", lambda *args, **kwargs: ok)
    assert cli.main(["--data-dir", str(tiny_data_dir), "--contenders", "jaxlin_fused", "--out", str(tmp_path)]) == 0
    assert "failed" not in capsys.readouterr().err


def test_the_failures_name_every_kind_of_measurement_that_did_not_run():
    from bench.report import failures

    results = _results_with_a_failed_case()
    results["contenders"]["torch_eager"] = {"status": "failed", "reason": "worker torch_eager exited with status 1:\nx"}
    results["contenders"]["tf_reference"] = {"status": "skipped", "reason": "tensorflow is not installed"}
    results["time_to_accuracy"] = [{"contender": "jaxlin_per_step", "status": "failed", "reason": "boom"}]
    results["end_to_end"] = [{"name": "jaxlin_help", "status": "failed", "reason": ""}]
    assert failures(results) == [
        "torch_eager: failed to start: worker torch_eager exited with status 1:",
        "jaxlin_fused, mine:Short, batch 50, 20 steps: jaxlin_fused setup: ValueError: Incompatible shapes for "
        "broadcasting", "jaxlin_per_step, time to accuracy: boom", "end to end jaxlin_help: no timed run"]


def test_no_vmap_and_no_parallel_start_no_worker_for_nothing_and_the_data_dir_is_absolute(
        tiny_data_dir, tmp_path, monkeypatch, capsys):
    """--no-vmap skips jaxlin_vmap and jaxlin_sweep, --no-parallel jaxlin_data_parallel: each is listed as
    skipped with its reason (not "ok"), and no worker starts; meta.data_dir is absolute from anywhere."""
    import dataclasses
    import shutil

    import bench.__main__ as cli
    from bench import runner

    real_run = runner.run
    monkeypatch.setattr(runner, "Worker", lambda *args, **kwargs: pytest.fail("no worker should start"))
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_data_dir, tmp_path / "data")
    seen = {}

    def run(plan, data_dir, names, **kwargs):
        seen["plan"] = plan
        return real_run(dataclasses.replace(plan, peak=False, tta_repeats=0, e2e_repeats=0), data_dir, names,
                        **kwargs)

    monkeypatch.setattr(cli.runner, "run", run)
    argv = ["--data-dir", "data", "--out", "out", "--contenders", "jaxlin_vmap,jaxlin_sweep,jaxlin_data_parallel",
            "--no-vmap", "--no-parallel", "--no-sweep", "--no-tta", "--no-e2e", "--no-steady-state"]
    assert cli.main(argv) == 0, capsys.readouterr().err
    assert seen["plan"].device_counts == [] and seen["plan"].num_models == []
    results = json.loads((tmp_path / "out" / "cpu.json").read_text())
    assert {name: c["status"] for name, c in results["contenders"].items()} == {
        "jaxlin_vmap": "skipped", "jaxlin_sweep": "skipped", "jaxlin_data_parallel": "skipped"}
    assert "--no-parallel" in results["contenders"]["jaxlin_data_parallel"]["reason"]
    assert "--no-vmap" in results["contenders"]["jaxlin_sweep"]["reason"]
    from bench.runner import ROOT

    assert (ROOT / results["meta"]["data_dir"]).resolve() == (tmp_path / "data").resolve()
    assert "jaxlin vmap | skipped: no many-models runs" in capsys.readouterr().out


def test_profile_traces_each_jax_row_in_an_untimed_run_after_the_timing(tiny_data_dir, tmp_path, monkeypatch,
                                                                       capsys):
    """--profile: the JAX contender's row is timed as without it, then run once more under a jax.profiler
    trace written to <out>/profile/<case>-<contender>/ (one line says where); the NumPy floor is timed, not
    traced, and said so."""
    import dataclasses

    import bench.__main__ as cli
    from bench import runner

    real_run = runner.run
    monkeypatch.setattr(cli.runner, "run", lambda plan, *args, **kwargs: real_run(
        dataclasses.replace(plan, peak=False), *args, **kwargs))
    out = tmp_path / "out"
    code = cli.main(["--data-dir", str(tiny_data_dir), "--out", str(out), "--cases", "linear:10:4",
                     "--contenders", "jaxlin_per_step,numpy_floor", "--profile", "1:3", *LIGHT, "--no-parallel"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    folder = out / "profile" / "linear-b10-s4-jaxlin_per_step"
    traces = list(folder.glob("plugins/profile/*/*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0
    assert [p.name for p in (out / "profile").iterdir()] == [folder.name]  # the floor is not traced
    written = [line for line in captured.out.splitlines() if line.startswith("Profile of steps")]
    assert written == [f"Profile of steps 1 to 3 (2 chunks) in {traces[0].parent}: open it with `tensorboard "
                       f"--logdir {folder}` (pip install tensorboard xprof; Profile tab), or load its "
                       "perfetto_trace.json.gz in Perfetto"]
    assert "--profile traces the JAX contenders only; not traced: numpy_floor" in captured.err
    results = json.loads((out / "cpu.json").read_text())
    [trace] = results["profile"]["traces"]
    assert (trace["contender"], trace["status"], trace["steps"]) == ("jaxlin_per_step", "ok", [1, 3])
    timed = {r["contender"]: r for r in results["throughput"]}
    assert timed["jaxlin_per_step"]["status"] == timed["numpy_floor"]["status"] == "ok"
    assert len(timed["jaxlin_per_step"]["repeats_seconds"]) == 1


def test_a_case_trace_holds_the_chunks_asked_for_or_says_why_there_is_none(tiny_data_dir, tmp_path):
    from bench.common import load_data
    from bench.jax_contenders import JaxlinFused

    contender = JaxlinFused(load_data(str(tiny_data_dir)))
    contender.setup("linear", 10, 6, steps_per_call=2)
    reply = contender.profile(str(tmp_path / "auto"))  # by default: the first chunks (set-up compiled them)
    assert reply["traced"] and reply["steps"] == [0, 6] and "(3 chunks)" in reply["lines"][0]
    assert list((tmp_path / "auto").glob("plugins/profile/*/*.xplane.pb"))
    reply = contender.profile(str(tmp_path / "late"), 3, 4)
    assert reply["steps"] == [2, 4] and "(1 chunk)" in reply["lines"][0]
    reply = contender.profile(str(tmp_path / "none"), 6, 9)
    assert not reply["traced"] and reply["steps"] is None and not (tmp_path / "none").exists()
    assert reply["lines"] == ["--profile 6:9: this case trains steps 0 to 6, no step of those; no profile written"]


def test_a_bad_profile_value_is_one_line_before_any_work(tiny_data_dir, tmp_path, monkeypatch, capsys):
    import bench.__main__ as cli

    monkeypatch.setattr(cli.runner, "run", lambda *args, **kwargs: pytest.fail("nothing should run"))
    for value, message in [("5:2", "--profile: START must be less than STOP, got '5:2'"),
                           ("x", "--profile: expected START:STOP"), ("-1:3", "--profile: expected START:STOP")]:
        with pytest.raises(SystemExit) as exit_:
            cli.main(["--data-dir", str(tiny_data_dir), "--out", str(tmp_path / "out"), f"--profile={value}"])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1, err
        assert err.startswith("python -m bench: error: ") and message in err
    with pytest.raises(SystemExit):
        cli.main(["--data-dir", str(tiny_data_dir), "--accelerator-check", "--profile"])
    assert "it takes no --profile" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
