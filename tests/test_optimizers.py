"""Optimizers from the settings (issue 16): schedules, warm-up, weight decay, clipping and a user's own
factory by reference, built as described, logged and recorded as what ran, sweepable, resumable."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlin import optimizers
from jaxlin.config import Config, ConfigError, resume_conflicts
from jaxlin.models import get_model
from jaxlin.training.sweep import Grid, SweepTrainer
from jaxlin.runtime.devices import resolve_placement
from jaxlin.training.trainer import fit

JAXLIN = Path(sys.executable).with_name("jaxlin")
STEPS = 1000
TINY = Config(num_steps=30, eval_every=15, batch_size=50, steps_per_call=15)

MODULE = '''
import jax
import optax


def make_opt(learning_rate):
    """A user's factory: given the learning rate (a float or a schedule), an optax transformation."""
    return optax.chain(optax.scale_by_rms(), optax.scale_by_learning_rate(learning_rate))


NOT_A_FACTORY = 3


def returns_a_number(learning_rate):
    return 7


def takes_nothing():
    return optax.sgd(0.1)


def bad_update(learning_rate):
    """A transformation whose update returns a number, not (updates, state)."""
    base = optax.sgd(learning_rate)
    return optax.GradientTransformation(base.init, lambda updates, state, params=None: 1)


def wrong_shapes(learning_rate):
    """A transformation whose updates are not of the params' shapes."""
    base = optax.sgd(learning_rate)
    return optax.GradientTransformation(
        base.init, lambda updates, state, params=None: (jax.tree.map(lambda u: u[:1], updates), state))


def wrong_state(learning_rate):
    """A transformation whose update's state is not its init's."""
    base = optax.sgd(learning_rate)
    return optax.GradientTransformation(base.init, lambda updates, state, params=None: (updates, ()))
'''


def _learning_rates(config: Config, counts):
    schedule = optimizers.learning_rate_schedule(config)
    return np.array([float(schedule(jnp.asarray(c))) for c in counts])


@pytest.mark.parametrize("settings, expected", [
    ({"schedule": "cosine"}, optax.cosine_decay_schedule(0.5, STEPS)),
    ({"schedule": "warmup-cosine", "warmup_steps": 100}, optax.warmup_cosine_decay_schedule(0.0, 0.5, 100, STEPS)),
    ({"schedule": "linear"}, optax.linear_schedule(0.5, 0.0, STEPS)),
    ({"schedule": "linear", "warmup_steps": 100}, optax.join_schedules(
        [optax.linear_schedule(0.0, 0.5, 100), optax.linear_schedule(0.5, 0.0, STEPS - 100)], [100])),
    ({"schedule": "constant", "warmup_steps": 100}, optax.linear_schedule(0.0, 0.5, 100)),
])
def test_each_schedule_gives_optax_learning_rates(settings, expected):
    config = Config(num_steps=STEPS, **settings).validate()
    counts = [0, 1, 50, 99, 100, 101, 500, 999, 1000]
    # peak * optax's schedule of peak 1: equal to optax's own to float32 rounding
    np.testing.assert_allclose(_learning_rates(config, counts), [float(expected(c)) for c in counts],
                               rtol=1e-6, atol=1e-9)


def test_the_constant_schedule_is_the_float_itself():
    assert optimizers.learning_rate_schedule(Config()) == 0.5


def _updates(optimizer, grads, params, steps=3):
    state = optimizer.init(params)
    for _ in range(steps):
        updates, state = optimizer.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params


PARAMS = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.ones(4)}
GRADS = {"w": jnp.full((3, 4), 0.3), "b": jnp.full(4, -2.0)}


def test_adam_is_adamw_only_when_weight_decay_is_positive():
    adam = Config(optimizer="adam", learning_rate=0.01)
    plain = _updates(optimizers.build(adam), GRADS, PARAMS)
    expected_plain = _updates(optax.adam(0.01), GRADS, PARAMS)
    decayed = _updates(optimizers.build(adam.replace(weight_decay=0.1)), GRADS, PARAMS)
    expected_decayed = _updates(optax.adamw(0.01, weight_decay=0.1), GRADS, PARAMS)
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(expected_plain)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(decayed), jax.tree.leaves(expected_decayed)):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(decayed["w"], plain["w"])
    assert optimizers.describe(adam.replace(weight_decay=0.1)) == "adamw(learning_rate=0.01, weight_decay=0.1)"


def test_sgd_weight_decay_is_added_to_the_gradients():
    config = Config(learning_rate=0.1, weight_decay=0.5)
    got = _updates(optimizers.build(config), GRADS, PARAMS, steps=1)
    expected = jax.tree.map(lambda p, g: p - 0.1 * (g + 0.5 * p), PARAMS, GRADS)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_clipping_engages_above_the_norm_only():
    clipped = Config(learning_rate=1.0, clip_norm=1.0)
    big = _updates(optimizers.build(clipped), GRADS, PARAMS, steps=1)
    moved = jax.tree.map(lambda a, b: a - b, PARAMS, big)
    assert np.isclose(float(optax.tree.norm(moved)), 1.0, rtol=1e-5)  # the step is clipped to norm 1
    small = jax.tree.map(lambda g: g * 1e-3, GRADS)  # norm below 1: untouched, as plain sgd
    for a, b in zip(jax.tree.leaves(_updates(optimizers.build(clipped), small, PARAMS)),
                    jax.tree.leaves(_updates(optax.sgd(1.0), small, PARAMS))):
        np.testing.assert_array_equal(a, b)
    assert optimizers.describe(clipped) == "sgd(learning_rate=1.0), clip_norm=1.0"


def test_what_ran_is_described():
    config = Config(optimizer="adam", learning_rate=0.001, schedule="warmup-cosine", warmup_steps=100,
                    num_steps=5000, weight_decay=0.0001, clip_norm=1.0)
    assert optimizers.describe(config) == ("adamw(learning_rate=warmup-cosine(0.001, warmup 100, 5000 steps), "
                                           "weight_decay=0.0001), clip_norm=1.0")
    assert optimizers.describe(Config()) == "sgd(learning_rate=0.5)"
    used = Config().used_settings()
    assert "weight_decay" not in used and "clip_norm" not in used and "warmup_steps" not in used


def test_default_settings_train_the_same_bits_as_plain_sgd(tiny_data):
    model = get_model("linear")
    ours = fit(TINY, tiny_data, model, progress=False)
    plain = fit(TINY, tiny_data, model, progress=False, optimizer=optax.sgd(0.5))
    for a, b in zip(jax.tree.leaves(ours.params), jax.tree.leaves(plain.params)):
        np.testing.assert_array_equal(a, b)
    assert ours.optimizer == "sgd(learning_rate=0.5)"


@pytest.mark.parametrize("settings, message", [
    ({"schedule": "cosine", "warmup_steps": 10}, "use --schedule warmup-cosine"),
    ({"schedule": "warmup-cosine", "warmup_steps": 1000}, "fewer than --num-steps 1000"),
    ({"warmup_steps": -1}, "warmup steps must be >= 0"),
    ({"weight_decay": -0.1}, "weight decay must be a finite number >= 0"),
    ({"weight_decay": float("nan")}, "weight decay must be a finite number >= 0"),
    ({"clip_norm": float("inf")}, "clip norm must be a finite number >= 0"),
    ({"weight_decay": 1e300}, r"weight decay must be at most 3.403e\+38 \(training holds it in float32\), got 1e\+300"),
    ({"clip_norm": 1e39}, r"clip norm must be at most 3.403e\+38"),
    ({"schedule": "exponential"}, "unknown schedule 'exponential'"),
    ({"optimizer": "mymod:factory", "weight_decay": 0.1}, "applies its own weight decay"),
    ({"optimizer": "rmsprop"}, "unknown optimizer 'rmsprop'.*MODULE:NAME"),
])
def test_settings_that_make_no_sense_are_refused_in_one_line(settings, message):
    with pytest.raises(ConfigError, match=message):
        Config(**settings).validate()


def test_a_name_registered_at_run_time_is_accepted(monkeypatch):
    monkeypatch.setitem(optimizers.REGISTRY, "lion", optimizers.OptimizerSpec(
        lambda learning_rate: optax.lion(learning_rate), ("learning_rate",), "Lion"))
    config = Config(optimizer="lion", learning_rate=1e-3, schedule="cosine").validate()
    assert optimizers.describe(config) == "lion(learning_rate=cosine(0.001, 1000 steps))"
    with pytest.raises(ConfigError, match="the lion optimizer takes no weight decay"):
        config.replace(weight_decay=0.1).validate()


def test_resuming_refuses_another_schedule_and_another_length_of_a_decaying_one():
    saved = Config(schedule="cosine", num_steps=100)
    assert resume_conflicts(saved, saved.replace(schedule="linear"))
    assert any("decays over the checkpoint's 100 steps" in c for c in resume_conflicts(saved, saved.replace(
        num_steps=200)))
    assert not resume_conflicts(Config(num_steps=100), Config(num_steps=200))  # constant: more steps are fine
    assert not resume_conflicts(Config(clip_norm=0.0), Config())  # 0 and None: both no clipping


def test_a_sweep_member_with_a_schedule_and_weight_decay_equals_its_solo_run(tiny_data):
    base = TINY.replace(model="mlp", hidden_sizes=(16,), optimizer="adam", learning_rate=0.01,
                        schedule="warmup-cosine", warmup_steps=5)
    grid = Grid(weight_decays=(0.0, 0.05), clip_norms=(0.0, 0.5))
    members = grid.members(base)
    model = get_model("mlp", (16,))
    trainer = SweepTrainer(base, members, tiny_data, model, resolve_placement())
    assert trainer.hyperparameters == ("learning_rate", "weight_decay", "clip_norm")
    state = trainer.init_state()
    while state.step < base.num_steps:
        state, _ = trainer.run_chunk(state, 15)
    finals = []
    for index, member in enumerate(members):
        alone = fit(member, tiny_data, model, progress=False).params
        got = trainer.member_params(state, index)
        for a, e in zip(jax.tree.leaves(got), jax.tree.leaves(alone)):
            assert np.abs(np.asarray(a) - np.asarray(e)).max() <= 1e-5 * max(np.abs(e).max(), 1e-12)
        finals.append(got)
    # the grid's values did change what trained
    assert not np.allclose(finals[0][0]["w"], finals[2][0]["w"])  # weight decay 0 vs 0.05
    assert not np.allclose(finals[0][0]["w"], finals[1][0]["w"])  # no clipping vs 0.5


@pytest.fixture
def workdir(tmp_path, tiny_data_dir, monkeypatch):
    (tmp_path / "myopt.py").write_text(MODULE)
    monkeypatch.setenv("JAXLIN_DATA_DIR", str(tiny_data_dir))
    return tmp_path


def _jaxlin(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(JAXLIN), *args], cwd=cwd, capture_output=True, text=True, timeout=600, check=False)


RUN = ["--batch-size", "50", "--eval-every", "5", "--no-progress", "--no-figures"]


@pytest.mark.slow
def test_a_user_optimizer_by_reference_trains_and_resumes_with_no_flag(workdir):
    out = workdir / "run"
    first = _jaxlin(workdir, "train", "--optimizer", "myopt:make_opt", "--learning-rate", "0.01", "--num-steps", "10",
                    "--output-dir", str(out), *RUN)
    assert first.returncode == 0, first.stderr
    assert "optimizer myopt:make_opt(learning_rate=0.01)" in first.stdout
    resumed = _jaxlin(workdir, "train", "--resume", "--num-steps", "20", "--output-dir", str(out), *RUN)
    assert resumed.returncode == 0, resumed.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_steps"] == 20 and metrics["resumed_from_step"] == 10
    assert metrics["config"]["optimizer"] == "myopt:make_opt"
    assert metrics["optimizer"] == "myopt:make_opt(learning_rate=0.01)"


@pytest.mark.slow
@pytest.mark.parametrize("reference, message", [
    ("myopt:NOT_A_FACTORY", "not a factory"),
    ("myopt:returns_a_number", "not an optax GradientTransformation"),
    ("myopt:takes_nothing", "calling it with learning_rate= failed"),
    ("myopt:nothing", "myopt has no nothing"),
    ("nosuchmodule:make", "cannot import nosuchmodule"),
])
def test_a_bad_optimizer_reference_is_one_line_and_writes_nothing(workdir, reference, message):
    out = workdir / "run"
    done = _jaxlin(workdir, "train", "--optimizer", reference, "--num-steps", "5", "--output-dir", str(out), *RUN)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "--optimizer" in lines[0], done.stderr
    assert not out.exists()


@pytest.mark.slow
def test_a_sweep_varies_weight_decay_and_records_what_ran(workdir):
    out = workdir / "sweep"
    done = _jaxlin(workdir, "sweep", "--optimizer", "adam", "--learning-rate", "0.01", "--weight-decays", "0,0.01",
                   "--schedule", "cosine", "--num-steps", "10", "--output-dir", str(out), "--batch-size", "50",
                   "--eval-every", "5", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "optimizer adamw(learning_rate=cosine(0.01, 10 steps), weight_decay=per member)" in done.stdout
    summary = json.loads((out / "sweep.json").read_text())
    assert [m["weight_decay"] for m in summary["members"]] == [0.0, 0.01]
    assert summary["grid"]["weight_decays"] == [0.0, 0.01]


def test_an_unknown_optimizer_on_the_command_line_is_one_line_exit_2(tmp_path, capsys):
    from jaxlin.cli.main import main

    assert main(["train", "--optimizer", "rmsprop", "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["jaxlin: error: unknown optimizer 'rmsprop'; choose one of sgd, momentum, adam, or give your own "
                   "as MODULE:NAME"]
    assert not (tmp_path / "run").exists()


class _StopAfterFirstSave:
    """Loop hooks that keep the first checkpoint and then stop the run, as a signal would."""

    checkpoints, last_recorded_step = True, None

    def __init__(self):
        self.saved = None

    def on_start(self, config):
        pass

    def on_evaluation(self, record):
        pass

    def save(self, state, progress, wait=False):
        if self.saved is None and state.step > 0:  # the first after training began
            self.saved = (jax.device_get(state), progress)

    def should_stop(self):
        return self.saved is not None

    def report(self, line):
        pass


def test_a_stopped_run_with_a_schedule_resumes_to_the_same_bits(tiny_data):
    """The schedule's step count lives in the optimizer state, which the checkpoint holds."""
    # 45 steps: the stop asked for while step 15 is saved is seen at the next boundary (30), the chunk
    # after 15 being already dispatched.
    config = TINY.replace(optimizer="momentum", learning_rate=0.1, schedule="warmup-cosine", warmup_steps=8,
                          weight_decay=0.01, clip_norm=0.5, checkpoint_every=15, num_steps=45)
    model = get_model("linear")
    whole = fit(config, tiny_data, model, progress=False)
    hooks = _StopAfterFirstSave()
    stopped = fit(config, tiny_data, model, progress=False, hooks=hooks)
    assert stopped.stopped and hooks.saved[0].step == 15
    resumed = fit(config, tiny_data, model, progress=False, start=hooks.saved)
    for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(whole.params)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("args, message", [
    (["--optimizer", "myopt:make_opt", "--weight-decays", "0,0.1"],
     "--weight-decays: your optimizer myopt:make_opt applies its own weight decay"),
    (["--weight-decay", "0.1", "--weight-decays", "0,0.1"], "give --weight-decay or --weight-decays, not both"),
    (["--clip-norms", "1,-1"], "--clip-norms: clip norm must be a finite number >= 0"),
    (["--weight-decays", "0.1,0.1"], "--weight-decays lists a value twice"),
])
def test_bad_sweep_optimizer_lists_are_one_line_exit_2(tmp_path, capsys, args, message):
    from jaxlin.cli.main import main

    assert main(["sweep", *args, "--output-dir", str(tmp_path / "sweep")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("reference, message", [
    ("myopt:bad_update", "its update returns int32[]; expected (updates, state), the updates of the params' "
                         "structure and shapes"),
    ("myopt:wrong_shapes", "its update returns updates that are not of the params' structure and shapes (2 arrays: "
                           "float32[1], float32[1, 10]; the params: 2 arrays: float32[10], float32[784, 10])"),
    ("myopt:wrong_state", "its update returns a state unlike the one its init returns (another structure or "
                          "shapes): a training step could not carry it"),
])
def test_an_optimizer_whose_update_cannot_train_is_refused_before_anything_is_written(
        workdir, monkeypatch, capsys, reference, message):
    from jaxlin.cli.main import main

    monkeypatch.chdir(workdir)
    out = workdir / "run"
    assert main(["train", "--optimizer", reference, "--num-steps", "5", "--output-dir", str(out), *RUN]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"jaxlin: error: --optimizer {reference}: {message}"]
    assert not out.exists()


def test_a_missing_dependency_of_the_users_module_is_not_a_missing_module(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    (workdir / "needsdep.py").write_text("import haiku_not_installed_anywhere\n")
    with pytest.raises(ConfigError, match=r"^--optimizer needsdep:make: importing needsdep failed: "
                                          r"ModuleNotFoundError: No module named 'haiku_not_installed_anywhere'$"):
        optimizers.spec("needsdep:make")
    with pytest.raises(ConfigError, match="^--optimizer nosuchmodule:make: cannot import nosuchmodule .*PYTHONPATH"):
        optimizers.spec("nosuchmodule:make")
    with pytest.raises(ConfigError, match="^--optimizer nosuchpackage.sub:make: cannot import nosuchpackage.sub"):
        optimizers.spec("nosuchpackage.sub:make")


def test_fit_refuses_an_optimizer_that_is_not_a_transformation_and_settings_it_would_drop(tiny_data):
    with pytest.raises(ConfigError, match=r"^fit's optimizer= must be an optax.GradientTransformation \(an object "
                                          r"with init and update\), not str; to name one, set "
                                          r"Config\(optimizer='adam'\) and leave optimizer= out$"):
        fit(TINY, tiny_data, get_model("linear"), optimizer="adam", progress=False)
    for settings, named in [({"weight_decay": 0.1, "optimizer": "adam"}, "weight_decay=0.1"),
                            ({"schedule": "cosine"}, "schedule='cosine'"), ({"clip_norm": 1.0}, "clip_norm=1.0"),
                            ({"warmup_steps": 5}, "warmup_steps=5")]:
        with pytest.raises(ConfigError, match=rf"^the Config sets {named}, which build the config's optimizer; "
                                              r"fit's optimizer= replaces it"):
            fit(TINY.replace(**settings), tiny_data, get_model("linear"), optimizer=optax.sgd(0.1), progress=False)
    bad = optax.GradientTransformation(optax.sgd(0.1).init, lambda updates, state, params=None: 1)
    with pytest.raises(ConfigError, match=r"^fit's optimizer=: its update returns int32\[\]; expected"):
        fit(TINY, tiny_data, get_model("linear"), optimizer=bad, progress=False)
