"""`python -m bench --accelerator-check`: what a session lent a GPU runs once, in one command, to one JSON file.

Issue 18: a GPU is lent to some sessions, for minutes, by chance. So the check is one command that fits in
8 minutes on one GPU and leaves everything it learned in `<out>/<platform>-check.json`, written again after
every section (a command killed at its time limit still leaves what finished). Each section has its own
status (ok, failed, skipped) and reason, so one failure does not lose the rest:

  tests              the test files that exercise the device (training determinism, data parallel, the
                     fused loop, sweeps, precision), `python -m pytest -m "not slow"` in a subprocess
  fused_vs_per_step  steps/s of jaxlin's fused loop and of its per-step loop (`jaxlin.training.trainer.Trainer`,
                     `Config(loop=...)`), medians of interleaved repeats after an untimed warm-up, and their ratio
  sweep_precision    a `jaxlin sweep` of many learning rates (`SweepTrainer`) with compute_dtype float32 and
                     bfloat16: model-steps/s and each setting's mean test accuracy
  data_parallel      the fused loop over every device (`devices="all"`) against one: steps/s, params agreement
  determinism        two `fit`s of the same short run: bit-identical params and the same loss curve

Every size is an explicit constant (`DEFAULT`, `QUICK`), never a guess from the machine, and a total budget
(`--check-budget`, default 450 s) skips the sections that would start after it is spent, with the reason
"time budget". Nothing here estimates a number: what is in the file was measured by the run that wrote it.

The test subprocess runs first, before this process initialises JAX's backend, and this process asks XLA
not to preallocate the GPU's memory (unless the environment already says), so that the tests have the
device's memory to themselves.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.util
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from pathlib import Path

from bench.common import HIDDEN_SIZES, learning_rate, thread_settings
from bench.report import one_line
from bench.runner import ROOT, cpu_model, recorded_data_dir, summarize
from jaxlin.data.datasets import DATA_DIR_ENV

SECTIONS = ("tests", "fused_vs_per_step", "sweep_precision", "data_parallel", "determinism")
LOOPS = ("fused", "per-step")
COMPUTE_DTYPES = ("float32", "bfloat16")
TEST_SELECTIONS = ("none", "quick", "gpu")
DEFAULT_BUDGET_SECONDS = 450.0
# Params of the run over every device agree with the single-device run's when their largest difference is at
# most this fraction of the largest param's magnitude (reductions are ordered differently over devices).
PARAMS_TOLERANCE = 1e-5
# The test files that exercise the device: determinism, the fused and per-step loops (train, chunk_form), mixed
# precision, sweeps, data parallel, the models. Files not in this checkout are listed as missing, not run.
# In this order: a run cut short by its timeout has run the first ones.
GPU_TEST_FILES = ("tests/test_determinism.py", "tests/test_train.py", "tests/test_chunk_form.py",
                  "tests/test_precision.py", "tests/test_sweep.py", "tests/test_parallel.py", "tests/test_models.py")
# One tiny test: what `--check-tests quick` runs (the suite's own test of this check runs this one only).
QUICK_TESTS = ("tests/test_determinism.py", "-k", "test_auto_resolves_by_a_fixed_rule")
# A test run stops after this many failures (the counts say how many ran).
TESTS_MAX_FAIL = 10
# At its timeout the test run gets SIGINT (pytest then writes its counts) and this long before SIGKILL.
TESTS_INTERRUPT_GRACE = 20.0
# The sweep's learning rates: plain SGD on the MLP, geometrically spaced over this range.
SWEEP_RATES = (0.01, 0.5)


@dataclasses.dataclass(frozen=True)
class Size:
    """How much each section does. Step counts are constants so that a run is the same on every machine; the
    default was chosen to fit in 8 minutes on one H200 with the tests' time included (not measured there yet:
    no GPU was lent when it was written; each section prints its wall time so the first GPU run shows it)."""

    tests: str  # the default --check-tests
    tests_timeout: float  # seconds the test subprocess may run (also bounded by what is left of the budget)
    throughput_cases: tuple[tuple[str, int, int], ...]  # (model, batch size, steps of one timed run)
    repeats: int  # timed repeats of each loop, interleaved, after one untimed run (compile and warm-up)
    sweep_model: str
    sweep_members: int
    sweep_batch_size: int
    sweep_steps: int
    sweep_repeats: int
    parallel_model: str
    parallel_steps: int
    parallel_repeats: int
    determinism_models: tuple[str, ...]
    determinism_steps: int


DEFAULT = Size(tests="gpu", tests_timeout=210.0,
               throughput_cases=(("linear", 100, 2000), ("mlp", 100, 2000), ("mlp", 1000, 1000), ("cnn", 100, 1000)),
               repeats=3, sweep_model="mlp", sweep_members=64, sweep_batch_size=100, sweep_steps=2000,
               sweep_repeats=2, parallel_model="linear", parallel_steps=1000, parallel_repeats=3,
               determinism_models=("linear", "mlp", "cnn"), determinism_steps=200)
QUICK = Size(tests="quick", tests_timeout=120.0,
             throughput_cases=(("linear", 100, 20), ("mlp", 100, 20), ("mlp", 500, 10)),
             repeats=2, sweep_model="mlp", sweep_members=4, sweep_batch_size=100, sweep_steps=20,
             sweep_repeats=1, parallel_model="linear", parallel_steps=20, parallel_repeats=2,
             determinism_models=("linear", "mlp"), determinism_steps=10)


class Skipped(Exception):
    """A section that does not apply here (one device; no pytest); the message is the reason."""


class Budget:
    """The check's total time: a section that would start after `seconds` is skipped."""

    def __init__(self, seconds: float):
        self.seconds, self.start = seconds, time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.seconds - self.elapsed()

    def spent(self) -> bool:
        return self.left() <= 0

    def reason(self) -> str:
        return f"time budget ({self.seconds:g} s, --check-budget) spent after {self.elapsed():.0f} s"


def output_path(out: Path, platform_name: str, quick: bool) -> Path:
    """`<out>/<platform>-check.json` (gpu-check.json on a GPU); a --quick run's is -check-quick.json, as the
    bench's own quick results are, so that a smoke test never replaces a real run's file."""
    return Path(out) / f"{platform_name}-check{'-quick' if quick else ''}.json"


def write_json(path: Path, results: dict) -> None:
    from jaxlin.data.files import atomic_write

    text = json.dumps(results, indent=1, allow_nan=False) + "\n"
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


# ---------------------------------------------------------------------------------------------- environment


def environment(data_dir: str) -> dict:
    """What ran: versions, the backend and its devices, the machine, the settings that change XLA."""
    import jax
    import jaxlib

    from jaxlin.runs.outputs import library_versions

    devices = jax.devices()
    names = ("JAX_PLATFORMS", "JAX_NUM_CPU_DEVICES", "XLA_FLAGS", "XLA_PYTHON_CLIENT_PREALLOCATE",
             "XLA_PYTHON_CLIENT_MEM_FRACTION", "CUDA_VISIBLE_DEVICES")
    return {"python": platform.python_version(), "jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "versions": library_versions(), "backend": jax.default_backend(), "device_count": len(devices),
            "device_kinds": sorted({d.device_kind for d in devices}), "devices": [str(d) for d in devices],
            "process_count": jax.process_count(), "platform": platform.platform(), "cpu_model": cpu_model(),
            "cpu_count": os.cpu_count(), "threads": thread_settings(),
            "settings": {n: os.environ[n] for n in names if n in os.environ},
            "data_dir": recorded_data_dir(data_dir)}


# ---------------------------------------------------------------------------------------------- tests


def test_command(selection: str, junit: Path) -> tuple[list[str], list[str]]:
    """(the pytest command, the chosen test files this checkout lacks) for a --check-tests selection."""
    if selection == "quick":
        chosen, missing = list(QUICK_TESTS), []
    else:
        chosen = [f for f in GPU_TEST_FILES if (ROOT / f).is_file()]
        missing = [f for f in GPU_TEST_FILES if not (ROOT / f).is_file()]
    return ([sys.executable, "-m", "pytest", "-q", f"--maxfail={TESTS_MAX_FAIL}", "-m", "not slow",
             "-p", "no:cacheprovider", f"--junitxml={junit}", *chosen], missing)


def junit_counts(path: Path) -> dict:
    """Counts and the failing tests' names from pytest's JUnit XML."""
    root = ElementTree.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    failing = []
    for suite in suites:
        for key in counts:
            counts[key] += int(suite.get(key, 0))
        for case in suite.iter("testcase"):
            problem = case.find("failure")
            problem = problem if problem is not None else case.find("error")
            if problem is not None:
                failing.append(f"{case.get('classname')}::{case.get('name')}: {one_line(problem.get('message', ''))}")
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return {"passed": passed, "failed": counts["failures"], "errors": counts["errors"],
            "skipped": counts["skipped"], "failing": failing}


def run_tests(selection: str, timeout: float, env: dict, log) -> dict:
    """Runs the chosen tests in a subprocess (its own process group, killed whole at the timeout)."""
    if selection == "none":
        raise Skipped("--check-tests none")
    if importlib.util.find_spec("pytest") is None:
        raise Skipped("pytest is not installed")
    if not (ROOT / "tests").is_dir():
        raise Skipped(f"no tests/ directory beside bench/ in {ROOT} (an installed copy, not a checkout)")
    with tempfile.TemporaryDirectory(prefix="jaxlin-check-tests-") as tmp:
        junit = Path(tmp) / "junit.xml"
        command, missing = test_command(selection, junit)
        shown = shlex.join(["python", *(part for part in command[1:] if not part.startswith("--junitxml"))])
        log(f"tests: {shown} (at most {timeout:.0f} s)")
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, start_new_session=True)
        try:
            output, _ = process.communicate(timeout=max(timeout, 1.0))
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGINT)  # pytest stops, and still writes what ran
            try:
                output, _ = process.communicate(timeout=TESTS_INTERRUPT_GRACE)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                output, _ = process.communicate()
            timed_out = True
        seconds = time.perf_counter() - start
        result = {"selection": selection, "command": shown, "files_missing": missing,
                  "exit_status": process.returncode, "seconds": seconds, "output_tail": output.splitlines()[-15:]}
        if junit.is_file():
            result.update(junit_counts(junit))
    failures = []
    if timed_out:
        ran = (f" ({result['passed']} passed, {result['failed'] + result['errors']} failed before)"
               if "passed" in result else "")
        failures.append(f"the tests ran past {timeout:.0f} s and were stopped{ran}")
    elif process.returncode != 0:
        last_line = one_line(output.splitlines()[-1]) if output.strip() else "no output"
        failed = result.get("failed", 0) + result.get("errors", 0)
        failures.append(f"pytest exited {process.returncode}: {failed} failed" if "failed" in result
                        else f"pytest exited {process.returncode}: {last_line}")
    result["failures"] = failures
    return result


# ---------------------------------------------------------------------------------------------- shared helpers


def _model(name: str, data):
    """The built-in model `name` for the data (what `jaxlin train --model NAME` builds)."""
    from jaxlin.models import get_model

    return get_model(name, HIDDEN_SIZES, num_classes=data.num_classes, image_shape=data.image_shape)


def _config(model: str, batch_size: int, num_steps: int, **changes):
    """The settings a section trains with: the bench's plain SGD (0.5 linear, 0.1 the others), no checkpoints."""
    from jaxlin.config import Config

    return Config(model=model, hidden_sizes=HIDDEN_SIZES, batch_size=batch_size, num_steps=num_steps,
                  learning_rate=learning_rate(model), checkpoint_every=0, **changes)


def timed_run(trainer, num_steps: int) -> tuple[float, object, object]:
    """(seconds, final state, last chunk's losses) of `num_steps` steps from a fresh state, chunk by chunk as
    `jaxlin train`'s loop runs them (fused: at most steps_per_call per call; per-step: one call per step),
    ended by block_until_ready on the params and losses."""
    import jax

    chunk = trainer.config.steps_per_call if trainer.config.loop == "fused" else num_steps
    state = trainer.init_state()
    jax.block_until_ready(state.params)
    start = time.perf_counter()
    losses = None
    while state.step < num_steps:
        state, losses = trainer.run_chunk(state, min(chunk, num_steps - state.step))
    jax.block_until_ready((state.params, losses))
    return time.perf_counter() - start, state, losses


def _host_leaves(params) -> list:
    import jax
    import numpy as np

    from jaxlin.runtime.devices import to_host

    return [np.asarray(x) for x in jax.tree.leaves(to_host(params))]


def bitwise_equal(a, b) -> bool:
    """Whether two params pytrees hold the same bits (shapes, dtypes and bytes)."""
    left, right = _host_leaves(a), _host_leaves(b)
    return len(left) == len(right) and all(x.shape == y.shape and x.dtype == y.dtype and x.tobytes() == y.tobytes()
                                           for x, y in zip(left, right))


# ---------------------------------------------------------------------------------------------- sections


def fused_vs_per_step(data, size: Size, budget: Budget, log) -> dict:
    """Per case, both loops built by jaxlin's Trainer, warmed up, then timed in interleaved repeats."""
    import jax

    from jaxlin.runtime.devices import resolve_placement
    from jaxlin.training.trainer import Trainer

    rows, failures = [], []
    for model_name, batch_size, num_steps in size.throughput_cases:
        case = {"model": model_name, "batch_size": batch_size, "num_steps": num_steps}
        if budget.spent():
            rows.append({**case, "status": "skipped", "reason": budget.reason()})
            continue
        try:
            start = time.perf_counter()
            model = _model(model_name, data)
            placement = resolve_placement()
            trainers, row = {}, {**case}
            with jax.default_device(placement.local_device):
                for loop in LOOPS:
                    trainer = Trainer(_config(model_name, batch_size, num_steps, loop=loop), data, model, placement)
                    first, _, _ = timed_run(trainer, num_steps)  # compiles, then runs: untimed warm-up
                    trainers[loop] = trainer
                    row[loop] = {"compile_seconds": trainer.compile_seconds, "first_run_seconds": first}
                seconds = {loop: [] for loop in LOOPS}
                for _ in range(size.repeats):
                    for loop in LOOPS:
                        seconds[loop].append(timed_run(trainers[loop], num_steps)[0])
            for loop in LOOPS:
                row[loop].update(summarize(seconds[loop], num_steps, batch_size))
            fused = trainers["fused"].config
            row["fused"].update({"steps_per_call": fused.steps_per_call, "dot_layout": fused.dot_layout,
                                 "chunk_form": fused.chunk_form})
            row["fused_over_per_step"] = row["fused"]["steps_per_second"] / row["per-step"]["steps_per_second"]
            row["status"] = "ok"
            rows.append(row)
            log(f"fused_vs_per_step: {model_name} batch {batch_size}: fused {row['fused']['steps_per_second']:,.0f} "
                f"steps/s, per-step {row['per-step']['steps_per_second']:,.0f} steps/s "
                f"({row['fused_over_per_step']:.2f}x) in {time.perf_counter() - start:.1f} s")
        except Exception as err:  # recorded; the next case goes on
            reason = one_line(f"{type(err).__name__}: {err}")
            rows.append({**case, "status": "failed", "reason": reason})
            failures.append(f"{model_name} batch {batch_size}: {reason}")
            log(f"fused_vs_per_step: {model_name} batch {batch_size}: failed: {reason}")
    skipped = [f"{r['model']} batch {r['batch_size']}: {r['reason']}" for r in rows if r["status"] == "skipped"]
    return {"repeats": size.repeats, "cases": rows, "failures": failures, "skipped": skipped}


def sweep_precision(data, size: Size, budget: Budget, log) -> dict:
    """One sweep per compute dtype (same members, same batch order), warmed up, timed in interleaved repeats."""
    import jax
    import numpy as np

    from jaxlin.runtime.devices import resolve_placement
    from jaxlin.training.sweep import Grid, SweepTrainer

    members_count, steps = size.sweep_members, size.sweep_steps
    rates = tuple(float(r) for r in np.geomspace(*SWEEP_RATES, members_count)) if members_count > 1 else (0.1,)
    placement = resolve_placement()
    model = _model(size.sweep_model, data)
    settings, trainers, failures = {}, {}, []
    with jax.default_device(placement.local_device):
        for dtype in COMPUTE_DTYPES:
            try:
                base = _config(size.sweep_model, size.sweep_batch_size, steps, steps_per_call=min(1000, steps),
                               compute_dtype=dtype)
                members = Grid(learning_rates=rates).members(base)
                trainer = SweepTrainer(base, members, data, model, placement)
                first, _, _ = timed_run(trainer, steps)
                trainers[dtype] = trainer
                settings[dtype] = {"compile_seconds": trainer.compile_seconds, "first_run_seconds": first,
                                   "seconds": []}
            except Exception as err:
                settings[dtype] = {"status": "failed", "reason": one_line(f"{type(err).__name__}: {err}")}
        final = {}
        for _ in range(size.sweep_repeats):
            for dtype in list(trainers):
                if budget.spent():
                    break
                try:
                    seconds, state, _ = timed_run(trainers[dtype], steps)
                    settings[dtype]["seconds"].append(seconds)
                    final[dtype] = state
                except Exception as err:
                    settings[dtype] = {"status": "failed", "reason": one_line(f"{type(err).__name__}: {err}")}
                    del trainers[dtype]
    for dtype, trainer in trainers.items():
        setting = settings[dtype]
        if not setting["seconds"]:
            settings[dtype] = {"status": "skipped", "reason": budget.reason()}
            continue
        state = final[dtype]
        accuracy = trainer.test(state.params) / len(data.test)
        diverged = trainer.frozen_at(state) >= 0
        median = statistics.median(setting["seconds"])
        setting.update({"status": "ok", "median_seconds": median, "steps_per_second": steps / median,
                        "model_steps_per_second": members_count * steps / median,
                        "mean_test_accuracy": float(np.mean(accuracy[~diverged])) if (~diverged).any() else None,
                        "min_test_accuracy": float(np.min(accuracy)), "max_test_accuracy": float(np.max(accuracy)),
                        "members_diverged": int(diverged.sum())})
        log(f"sweep_precision: {dtype}: {setting['model_steps_per_second']:,.0f} model-steps/s, mean test accuracy "
            f"{setting['mean_test_accuracy']}")
    result = {"model": size.sweep_model, "members": members_count, "batch_size": size.sweep_batch_size,
              "num_steps": steps, "learning_rates": [rates[0], rates[-1]], "repeats": size.sweep_repeats,
              "settings": settings}
    if all(settings[d].get("status") == "ok" for d in COMPUTE_DTYPES):
        same = bitwise_equal(final["float32"].params, final["bfloat16"].params)
        result["bfloat16_same_bits_as_float32"] = same
        result["bfloat16_over_float32"] = (settings["bfloat16"]["steps_per_second"]
                                           / settings["float32"]["steps_per_second"])
        if same:  # a compute dtype that changes nothing was not applied
            settings["bfloat16"].update(status="failed", reason="trained the same bits as float32: "
                                                                "compute_dtype bfloat16 was not applied")
    for dtype in COMPUTE_DTYPES:
        if settings[dtype].get("status") == "failed":
            failures.append(f"{dtype}: {settings[dtype]['reason']}")
    result["failures"] = failures
    result["skipped"] = [f"{dtype}: {settings[dtype]['reason']}" for dtype in COMPUTE_DTYPES
                         if settings[dtype].get("status") == "skipped"]
    return result


def data_parallel(data, size: Size, budget: Budget, log) -> dict:
    """The fused loop on one device and on every device, from the same init and batch order."""
    import jax
    import numpy as np

    from jaxlin.runtime.devices import resolve_placement
    from jaxlin.training.trainer import Trainer

    count = len(jax.devices())
    if count == 1:
        raise Skipped("one device")
    batch_size = -(-100 // count) * count  # the tutorial's 100, rounded up to divide by the devices
    steps, model = size.parallel_steps, _model(size.parallel_model, data)
    trainers, result = {}, {"model": size.parallel_model, "batch_size": batch_size, "num_steps": steps,
                            "devices": count, "repeats": size.parallel_repeats}
    for label, devices in (("one_device", "1"), ("all_devices", "all")):
        config = _config(size.parallel_model, batch_size, steps, devices=devices)
        placement = resolve_placement(config.device, config.devices, batch_size)
        with jax.default_device(placement.local_device):
            trainers[label] = Trainer(config, data, model, placement)
            first, _, _ = timed_run(trainers[label], steps)
        result[label] = {"compile_seconds": trainers[label].compile_seconds, "first_run_seconds": first,
                         "placement": placement.describe()}
    seconds, states = {label: [] for label in trainers}, {}
    for _ in range(size.parallel_repeats):
        for label, trainer in trainers.items():
            with jax.default_device(trainer.placement.local_device):
                took, states[label], _ = timed_run(trainer, steps)
            seconds[label].append(took)
    for label in trainers:
        result[label].update(summarize(seconds[label], steps, batch_size))
    one, every = _host_leaves(states["one_device"].params), _host_leaves(states["all_devices"].params)
    largest = max(float(np.max(np.abs(x))) for x in one)
    difference = max(float(np.max(np.abs(x - y))) for x, y in zip(one, every))
    relative = difference / largest if largest else difference
    result.update({"all_over_one": result["all_devices"]["steps_per_second"] / result["one_device"]["steps_per_second"],
                   "max_param_difference": difference, "largest_param": largest,
                   "difference_over_largest": relative, "tolerance": PARAMS_TOLERANCE,
                   "params_agree": relative <= PARAMS_TOLERANCE})
    log(f"data_parallel: {count} devices {result['all_devices']['steps_per_second']:,.0f} steps/s, one "
        f"{result['one_device']['steps_per_second']:,.0f} steps/s; params differ by {relative:.2g} of the largest")
    result["failures"] = [] if result["params_agree"] else [
        f"params of {count} devices differ from one device's by {relative:.3g} of the largest (> {PARAMS_TOLERANCE:g})"]
    return result


def determinism(data, size: Size, budget: Budget, log) -> dict:
    """Per model, the same short `fit` twice: its params bit for bit, and its evaluation records' loss and accuracy."""
    from jaxlin.training.trainer import fit

    steps, runs, failures = size.determinism_steps, [], []
    for model_name in size.determinism_models:
        if budget.spent():
            runs.append({"model": model_name, "status": "skipped", "reason": budget.reason()})
            continue
        config = _config(model_name, 100, steps, eval_every=max(1, steps // 5))
        try:
            results = [fit(config, data, _model(model_name, data), progress=False) for _ in range(2)]
        except Exception as err:  # recorded; the next model goes on
            reason = one_line(f"{type(err).__name__}: {err}")
            runs.append({"model": model_name, "status": "failed", "reason": reason})
            failures.append(f"{model_name}: {reason}")
            log(f"determinism: {model_name}: failed: {reason}")
            continue
        curves = [[(r["step"], r["train_loss"], r["test_accuracy"]) for r in result.evaluations] for result in results]
        run = {"model": model_name, "num_steps": steps, "evaluations": len(curves[0]),
               "same_params": bitwise_equal(results[0].params, results[1].params),
               "same_loss_curve": curves[0] == curves[1],
               "final_test_accuracy": [r.final["accuracy"] if r.final and "accuracy" in r.final else None
                                       for r in results]}
        run["identical"] = run["same_params"] and run["same_loss_curve"]
        run["status"] = "ok"
        runs.append(run)
        if not run["identical"]:
            failures.append(f"{model_name}: two runs differ ({'params' if not run['same_params'] else 'loss curve'})")
        log(f"determinism: {model_name}: {'identical' if run['identical'] else 'DIFFERENT'}")
    done = [r for r in runs if r["status"] == "ok"]
    return {"runs": runs, "identical": all(r["identical"] for r in done) if done else None, "failures": failures,
            "skipped": [f"{r['model']}: {r['reason']}" for r in runs if r["status"] == "skipped"]}


# ---------------------------------------------------------------------------------------------- the check


def run_section(name: str, body: Callable[[], dict], results: dict, budget: Budget, path: Path | None, log) -> None:
    """Runs one section into results["sections"][name], never raising: a section's own failures (its
    "failures" list) or an exception make it failed, `Skipped` skipped; parts it skipped (its "skipped" list,
    when the budget ran out midway) are its reason. The file is rewritten after it."""
    record = {"status": "skipped", "reason": budget.reason()}
    if not budget.spent():
        start = time.perf_counter()
        try:
            record = body()
            failures, skipped = record.pop("failures", []), record.pop("skipped", [])
            reason = "; ".join(failures) or ("; ".join(f"skipped {part}" for part in skipped) if skipped else None)
            record = {"status": "failed" if failures else "ok", "reason": reason, **record}
        except Skipped as skip:
            record = {"status": "skipped", "reason": str(skip)}
        except Exception as err:
            record = {"status": "failed", "reason": one_line(f"{type(err).__name__}: {err}"),
                      "traceback": traceback.format_exc().splitlines()[-12:]}
        record["seconds"] = time.perf_counter() - start
    results["sections"][name] = record
    seconds = f" in {record['seconds']:.1f} s" if "seconds" in record else ""
    reason = f" ({record['reason']})" if record.get("reason") else ""
    log(f"{name}: {record['status']}{seconds}{reason} [{budget.elapsed():.0f} s of {budget.seconds:g}]")
    if path is not None:
        results["total_seconds"] = budget.elapsed()
        write_json(path, results)


def main(data_dir: str, out: str | os.PathLike, quick: bool = False, tests: str | None = None,
         budget_seconds: float = DEFAULT_BUDGET_SECONDS, command: str = "", log=None) -> int:
    """Runs every section and writes `<out>/<platform>-check.json`; returns 0 when no section failed, else 1.
    Call before this process initialises JAX's backend (the tests run first, on a device nobody holds)."""
    log = log or (lambda line: print(f"accelerator check: {line}", file=sys.stderr, flush=True))
    size = QUICK if quick else DEFAULT
    selection = tests or size.tests
    if selection not in TEST_SELECTIONS:
        raise ValueError(f"--check-tests must be one of {', '.join(TEST_SELECTIONS)}, got {selection!r}")
    # The tests read the real MNIST files from where the check does (without them, those tests skip).
    test_env = {**os.environ, DATA_DIR_ENV: str(Path(data_dir).resolve())}
    if "XLA_PYTHON_CLIENT_PREALLOCATE" not in os.environ:  # this process leaves the GPU's memory to the tests
        os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    budget = Budget(budget_seconds)
    results = {"kind": "jaxlin accelerator check", "command": command, "quick": quick,
               "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
               "budget_seconds": budget_seconds, "test_selection": selection, "size": dataclasses.asdict(size),
               "environment": None, "sections": {name: {"status": "pending"} for name in SECTIONS}}
    # The tests first, before this process touches the device: no path yet (it names the platform).
    run_section("tests", lambda: run_tests(selection, min(size.tests_timeout, max(budget.left(), 1.0)), test_env, log),
                results, budget, None, log)
    import jax

    from jaxlin.data.datasets import load_idx_dir

    results["environment"] = environment(data_dir)
    path = output_path(Path(out), jax.default_backend(), quick)
    path.parent.mkdir(parents=True, exist_ok=True)
    log(f"{results['environment']['device_count']} {results['environment']['backend']} device(s): "
        f"{', '.join(results['environment']['device_kinds'])}; writing {path}")
    write_json(path, results)
    data = load_idx_dir(data_dir)
    sections = {"fused_vs_per_step": fused_vs_per_step, "sweep_precision": sweep_precision,
                "data_parallel": data_parallel, "determinism": determinism}
    for name, section in sections.items():
        run_section(name, lambda section=section: section(data, size, budget, log), results, budget, path, log)
    results["finished"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    results["total_seconds"] = budget.elapsed()
    write_json(path, results)
    failed = [name for name, record in results["sections"].items() if record["status"] == "failed"]
    log(f"wrote {path} in {budget.elapsed():.0f} s: " + ", ".join(
        f"{name} {record['status']}" for name, record in results["sections"].items()))
    for name in failed:
        print(f"python -m bench: failed: accelerator check {name}: {results['sections'][name]['reason']}",
              file=sys.stderr)
    return 1 if failed else 0
