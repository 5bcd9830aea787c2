"""--compute-dtype and --matmul-precision (training/precision.py): bfloat16 trains to the float32
accuracy with float32 params, its dots really are bfloat16, the matmul precision reaches the program,
evaluation stays float32, and both settings are recorded and kept on resume."""

import json
import re
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlin.cli.main import main
from jaxlin.config import Config
from jaxlin.models import as_model, get_model
from jaxlin.optimizers import build
from jaxlin.runtime.devices import resolve_placement
from jaxlin.training import precision
from jaxlin.training.sweep import Grid, SweepTrainer
from jaxlin.training.trainer import fit, make_update_fn

BF16 = Config(compute_dtype="bfloat16")
TINY = ["--num-steps", "40", "--eval-every", "20", "--checkpoint-every", "20", "--batch-size", "50", "--no-progress"]


def _dtypes(tree) -> list[str]:
    return [str(leaf.dtype) for leaf in jax.tree.leaves(tree)]


def _lowered_step(config: Config, model=None, batch: int = 8) -> tuple[str, object, object]:
    """(the lowered text of the training step `config` gives, its inputs' state, its outputs' state shapes)."""
    model = model or get_model(config.model, config.hidden_sizes)
    optimizer = build(config)
    trained = precision.for_training(model, config)
    update = make_update_fn(trained.apply, optimizer, trained)
    params = model.init(jax.random.key(0))
    opt_state = optimizer.init(model.trained_part(params))
    args = (params, opt_state, jnp.zeros((batch, 784), jnp.float32), jnp.zeros((batch,), jnp.int32))
    if trained.train_apply is not None:
        args += (jax.random.key(1),)
    out = jax.eval_shape(update, *args)
    return jax.jit(update).lower(*args).as_text(), (params, opt_state), out[:2]


def _ops(text: str, op: str) -> list[str]:
    return [line for line in text.splitlines() if f"stablehlo.{op}" in line]


# --- the numbers -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("config", [
    pytest.param(Config(eval_every=1000, checkpoint_every=0), id="linear-sgd-1000"),
    pytest.param(Config(model="mlp", hidden_sizes=(128,), optimizer="adam", learning_rate=1e-3, eval_every=1000,
                        checkpoint_every=0), id="mlp-adam-1000"),
])
def test_bfloat16_training_reaches_the_float32_test_accuracy(mnist, config):
    model = get_model(config.model, config.hidden_sizes)
    f32 = fit(config, mnist, model, progress=False)
    bf16 = fit(config.replace(compute_dtype="bfloat16"), mnist, model, progress=False)
    assert abs(bf16.final["accuracy"] - f32.final["accuracy"]) <= 0.005, (bf16.final["accuracy"], f32.final["accuracy"])
    assert bf16.final["accuracy"] > 0.9
    # the master copy stays float32, and it is not the float32 run's (bfloat16 really computed something else)
    assert set(_dtypes(bf16.params)) == {"float32"} and set(_dtypes(bf16.state.opt_state)) <= {"float32", "int32"}
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(bf16.params), jax.tree.leaves(f32.params)))
    assert bf16.config.compute_dtype == "bfloat16" and f32.config.compute_dtype == "float32"


# --- the program -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("config", [BF16, BF16.replace(model="mlp", hidden_sizes=(16,), optimizer="adam")])
def test_the_bfloat16_step_computes_its_dots_in_bfloat16_and_keeps_its_state_float32(config):
    text, (params, opt_state), (new_params, new_opt_state) = _lowered_step(config)
    dots = _ops(text, "dot_general")
    assert len(dots) >= 2  # the forward dot and the weights' gradient at least
    for dot in dots:
        operands = re.search(r": \((tensor<[^)]*)\) -> (tensor<\S*>)", dot)
        assert operands and "f32>" not in operands.group(1) and operands.group(1).count("bf16>") == 2, dot
    assert _dtypes(new_params) == _dtypes(params) == ["float32"] * len(jax.tree.leaves(params))
    assert _dtypes(new_opt_state) == _dtypes(opt_state)
    float32_text, _, _ = _lowered_step(config.replace(compute_dtype="float32"))
    assert "bf16" not in float32_text  # the default adds no cast anywhere


def test_the_convolutions_compute_in_bfloat16_too():
    text, _, _ = _lowered_step(BF16.replace(model="cnn"), batch=2)
    convolutions = _ops(text, "convolution")
    assert len(convolutions) >= 3 and all(re.search(r": \(tensor<\S*xbf16>, tensor<\S*xbf16>\)", c)
                                          for c in convolutions)


@pytest.mark.parametrize("setting, shown", [("highest", "HIGHEST"), ("high", "HIGH")])
@pytest.mark.parametrize("model", ["linear", "cnn"])
def test_the_matmul_precision_is_written_into_every_dot_of_the_step(setting, shown, model):
    for dtype in ("float32", "bfloat16"):
        text, _, _ = _lowered_step(Config(model=model, matmul_precision=setting, compute_dtype=dtype), batch=2)
        ops = _ops(text, "dot_general") + _ops(text, "convolution")
        assert ops and all(f"precision = [{shown}, {shown}]" in op or f"<precision {shown}>, #stablehlo<precision "
                           f"{shown}>" in op for op in ops), text
    default, _, _ = _lowered_step(Config(model=model), batch=2)
    assert "HIGH" not in default and "precision = [DEFAULT, DEFAULT]" in default


def _recording(model, seen: list):
    """`model` whose apply notes, each time it is traced, the dtypes it gets and the matmul precision set."""
    apply = model.apply

    def recorded(params, images):
        seen.append((str(images.dtype), _dtypes(params)[0], jax.config.jax_default_matmul_precision))
        return apply(params, images)

    return model._replace(apply=recorded)


def test_fit_trains_in_bfloat16_and_evaluates_in_float32(tiny_data):
    seen = []
    config = BF16.replace(num_steps=20, eval_every=10, batch_size=50, matmul_precision="highest")
    result = fit(config, tiny_data, _recording(get_model("linear"), seen), progress=False)
    assert ("bfloat16", "bfloat16", "highest") in seen  # the training step
    assert ("float32", "float32", None) in seen  # the evaluations
    assert set(seen) == {("bfloat16", "bfloat16", "highest"), ("float32", "float32", None)}
    assert (result.config.compute_dtype, result.config.matmul_precision) == ("bfloat16", "highest")
    per_step = []
    fit(config.replace(loop="per-step"), tiny_data, _recording(get_model("linear"), per_step), progress=False)
    assert ("bfloat16", "bfloat16", "highest") in per_step


class BatchNormLike:
    """A stateful model: a running mean of the images (float32, not trained) and a step counter (int32)."""

    def init(self, key):
        del key
        return {"w": jnp.zeros((784, 10)), "b": jnp.zeros(10), "mean": jnp.zeros(784), "count": jnp.int32(0)}

    def apply(self, params, images):
        return (images - params["mean"]) @ params["w"] + params["b"]

    def train_apply(self, params, images, key):
        del key
        self.seen.append(_dtypes({"images": images, **params}))
        mean = 0.9 * params["mean"] + 0.1 * images.mean(axis=0)
        return self.apply(params, images), {**params, "mean": mean, "count": params["count"] + 1}

    def trainable(self, params):
        return {"w": True, "b": True, "mean": False, "count": False}


def test_a_stateful_model_gets_its_updated_leaves_back_in_their_own_dtypes(tiny_data):
    model = BatchNormLike()
    model.seen = []
    result = fit(BF16.replace(num_steps=20, eval_every=20, batch_size=50), tiny_data, model, progress=False)
    # traced in bfloat16 (sorted keys: b, count, images, mean, w), the counter left an integer
    assert ["bfloat16", "int32", "bfloat16", "bfloat16", "bfloat16"] in model.seen
    assert {k: str(v.dtype) for k, v in result.params.items()} == {
        "w": "float32", "b": "float32", "mean": "float32", "count": "int32"}
    assert int(result.params["count"]) == 20 and np.abs(result.params["mean"]).max() > 0
    _, _, (new_params, _) = _lowered_step(BF16, model=as_model(model, "bn", (28, 28, 1), 10))
    assert {k: str(v.dtype) for k, v in new_params.items()} == {
        "w": "float32", "b": "float32", "mean": "float32", "count": "int32"}


# --- the command line: recorded, checked, kept on resume --------------------------------------------------------

def test_train_records_both_settings_evaluate_agrees_and_resume_keeps_them(tiny_data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    common = ["--data-dir", str(tiny_data_dir), "--output-dir", str(out)]
    assert main(["train", *common, *TINY, "--no-figures", "--compute-dtype", "bfloat16",
                 "--matmul-precision", "highest"]) == 0
    printed = capsys.readouterr().out
    assert "compute bfloat16" in printed.split("Accuracy")[0] and "matmul precision highest" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["config"]["compute_dtype"], metrics["config"]["matmul_precision"]) == ("bfloat16", "highest")
    assert main(["evaluate", str(out / "params.npz"), "--data-dir", str(tiny_data_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["test_accuracy"] == metrics["final_test_accuracy"]

    # another compute dtype or precision on resume is refused, in one line, before anything runs
    refused = (("--compute-dtype", "float32", "bfloat16"), ("--matmul-precision", "default", "highest"))
    for flag, value, saved in refused:
        assert main(["train", *common, "--resume", "--num-steps", "60", "--no-progress", flag, value]) == 2
        err = capsys.readouterr().err.strip()
        assert f"{flag} {value} (the checkpoint has {saved})" in err and len(err.splitlines()) == 1, err
    assert main(["train", *common, "--resume", "--num-steps", "60", "--eval-every", "20", "--no-progress"]) == 0
    resumed = json.loads((out / "metrics.json").read_text())
    assert (resumed["config"]["compute_dtype"], resumed["config"]["matmul_precision"]) == ("bfloat16", "highest")
    assert "compute bfloat16" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["train", "sweep"])
@pytest.mark.parametrize("flag, value", [("--compute-dtype", "float16"), ("--matmul-precision", "low")])
def test_a_bad_value_is_one_line_and_exit_2(tiny_data_dir, tmp_path, capsys, command, flag, value):
    with pytest.raises(SystemExit) as info:
        main([command, "--data-dir", str(tiny_data_dir), "--output-dir", str(tmp_path / "bad"), flag, value])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"argument {flag}: invalid choice: '{value}'" in err
    assert not (tmp_path / "bad").exists()


# --- sweeps ------------------------------------------------------------------------------------------------------

def _distance(actual, expected) -> float:
    """The largest difference of any leaf, relative to the largest magnitude of its expected value (the
    measure of test_sweep.py's `_close`)."""
    return max(float(np.abs(np.asarray(a) - np.asarray(e)).max() / max(np.abs(e).max(), 1e-12))
               for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)))


# test_sweep.py holds float32 members to 1e-5 of their solo runs. In bfloat16 (8 significant bits) the
# sweep's program (its members' dots as one wide matmul) and a solo run's round some products differently,
# and one such rounding carries on through the steps: measured up to 1.8e-3 here (the linear model, 120
# steps at learning rate 0.3), so the bound is one bfloat16 unit, 2**-8, of the leaf's largest magnitude.
BF16_SWEEP_TOLERANCE = 2.0**-8


@pytest.mark.parametrize("config, grid", [
    pytest.param(Config(model="mlp", hidden_sizes=(16,), num_steps=120, eval_every=40, batch_size=50,
                        steps_per_call=40, compute_dtype="bfloat16"), Grid(learning_rates=(0.05, 0.5), seeds=(0, 3)),
                 id="mlp-shared-order", marks=pytest.mark.slow),
    pytest.param(Config(num_steps=120, eval_every=40, batch_size=50, steps_per_call=40, learning_rate=1.0,
                        compute_dtype="bfloat16", matmul_precision="highest"), Grid(learning_rates=(0.3, 1.0)),
                 id="linear-highest"),
])
def test_bfloat16_sweep_members_match_solo_bfloat16_runs(tiny_data, config, grid):
    members = grid.members(config)
    trainer = SweepTrainer(config, members, tiny_data, get_model(config.model, config.hidden_sizes),
                           resolve_placement())
    state = trainer.init_state()
    while state.step < config.num_steps:
        state, _ = trainer.run_chunk(state, min(40, config.num_steps - state.step))
    assert set(_dtypes(state.params)) == {"float32"}
    for index, member in enumerate(members):
        model = get_model(member.model, member.hidden_sizes)
        alone = fit(member, tiny_data, model, progress=False)
        float32 = fit(member.replace(compute_dtype="float32"), tiny_data, model, progress=False)
        swept = trainer.member_params(state, index)
        assert _distance(swept, alone.params) <= BF16_SWEEP_TOLERANCE
        # ... and it is the bfloat16 run it matches: the float32 one is further away
        assert _distance(swept, alone.params) < _distance(swept, float32.params)


def test_the_sweep_command_records_the_compute_dtype(tiny_data_dir, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["sweep", "--data-dir", str(tiny_data_dir), "--output-dir", str(out), *TINY,
                 "--learning-rates", "0.1,0.5", "--compute-dtype", "bfloat16"]) == 0
    assert "compute bfloat16" in capsys.readouterr().out
    summary = json.loads((out / "sweep.json").read_text())
    assert summary["config"]["compute_dtype"] == "bfloat16"
    best = json.loads((out / "best" / "metrics.json").read_text())
    assert best["config"]["compute_dtype"] == "bfloat16"
    assert main(["sweep", "--output-dir", str(out), "--resume", "--num-steps", "60", "--no-progress",
                 "--compute-dtype", "float32"]) == 2
    assert "--compute-dtype float32 (the checkpoint has bfloat16)" in capsys.readouterr().err
