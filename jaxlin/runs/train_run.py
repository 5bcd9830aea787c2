"""The jobs behind the command line: train (new, overwriting or resuming) with outputs, and evaluate
saved params.

A `jaxlin train` job: check the output directory, load and validate the data, take the
directory's lock, train with checkpoints and streamed records (stopping cleanly on
SIGINT/SIGTERM), then publish metrics, figures and params as a whole.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np

from jaxlin.runs import params_file as checkpoint

from jaxlin import optimizers
from jaxlin.config import Config, ConfigError, resume_conflicts
from jaxlin.data.datasets import DATA_DIR_ENV, DataError, Datasets, load_datasets, resolve_data_dir
from jaxlin.data.download import DownloadError
from jaxlin.training.evaluate import evaluate
from jaxlin.models import Model, ModelError, get_model
from jaxlin.runs.rundir import (METRICS_FILE, PARAMS_FILE, FollowerRunDir, RunDir, RunDirError, RunDirGone,
                                check_writable, to_json)
from jaxlin.runtime.signals import StopRequest
from jaxlin.runs.checkpoints import CHECKPOINT_DIR, CheckpointStore, CheckpointWriteError, DamagedCheckpoint
from jaxlin.training.state import TrainState
from jaxlin.runtime.devices import (check_same_everywhere, failing_together, is_primary, max_over_processes,
                             resolve_placement, sync)
from jaxlin.training.trainer import FitHooks, FitResult, Progress, fit

MODES = ("new", "overwrite", "resume")
# What a run reports in one line and exit 2 (see cli.py): in a multi-process run, the processes agree on them.
USER_ERRORS = (ConfigError, DataError, DownloadError, ModelError, RunDirError, checkpoint.CheckpointError, OSError)


class Stopped(Exception):
    """The run stopped on a signal after saving what it could; `exit_code` is 128 + the signal."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def library_versions() -> dict:
    versions = {"python": platform.python_version()}
    for package in ("jaxlin", "jax", "jaxlib", "optax", "numpy", "matplotlib"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    versions["jaxlin_commit"] = _git_commit()
    return versions


def _git_commit() -> str | None:
    """The commit of a jaxlin source checkout (an editable install), else None."""
    source = Path(__file__).resolve().parents[2]
    if not (source / ".git").exists():
        return None
    try:
        done = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip() if done.returncode == 0 else ""
    return commit or None


def accuracy_line(accuracy: float, when: str = "") -> str:
    """The tutorial's line, e.g. "Accuracy on test-set: 91.8%"."""
    return f"Accuracy on test-set: {accuracy:.1%}" + (f" ({when})" if when else "")


def build_model(config: Config) -> Model:
    return get_model(config.model, config.hidden_sizes, config.activation)


def describe_run(config: Config, data: Datasets, model: Model) -> str:
    opt = optimizers.describe(config.optimizer, config)
    seeds = f"seed {config.seed}" + (f", data seed {config.data_seed}" if config.data_seed is not None else "")
    return (
        f"Data: {data.name} from {data.source}: train {len(data.train)}, "
        f"validation {len(data.validation)}, test {len(data.test)}\n"
        f"Model: {model.describe()}; optimizer {opt}; batch {config.batch_size}; "
        f"{config.num_steps} steps; {config.loop} loop; {seeds}; "
        f"device {resolve_placement(config.device, config.devices, config.batch_size).describe()}"
    )


def resume_command(out: Path) -> str:
    command = f"jaxlin train --resume --output-dir {shlex.quote(str(out))}"
    if jax.process_count() > 1:
        command += " (on every process, with its distributed flags as before)"
    return command


def figure_inputs(data: Datasets, model: Model, params, final: dict, evaluations: list[dict],
                  curve_key: str = "test_accuracy") -> dict:
    """What `plots.draw_run_figures` needs, as arrays and JSON values (a figure worker gets them)."""
    weights = model.first_dense_weights(params)
    return {"images": data.test.images_uint8, "labels": data.test.labels, "predictions": final["predictions"],
            "weights": None if weights is None else weights[0],
            "weight_titles": None if weights is None else weights[1],
            "confusion": np.asarray(final["confusion_matrix"]), "evaluations": evaluations, "curve_key": curve_key}


def write_figures(directory: Path, data: Datasets, model: Model, params, final: dict,
                  evaluations: list[dict], curve_key: str = "test_accuracy", worker=None) -> None:
    """The tutorial's figures of a trained model; the learning curve plots `curve_key` of each record.
    Drawn by `worker` (a `figures.FigureWorker` started at launch) when given, else here."""
    inputs = figure_inputs(data, model, params, final, evaluations, curve_key)
    if worker is not None and worker.draw(directory, inputs):
        return
    from jaxlin.runs import plots  # matplotlib: only when figures are drawn

    plots.draw_run_figures(directory, **inputs)


class _RunHooks(FitHooks):
    """Streams records into the run directory, checkpoints through orbax, stops on signals."""

    def __init__(self, run_dir: RunDir, store: CheckpointStore | None, config: Config, stop: StopRequest, log,
                 model: Model):
        self.run_dir, self.store, self.config, self.stop, self.log = run_dir, store, config, stop, log
        self.model_spec = model.spec  # what --resume checks that it rebuilds
        self.checkpoints = store is not None
        self.saved_step: int | None = None

    def on_start(self, config: Config) -> None:
        self.config = config  # checkpoints record the resolved dot layout, so a resume keeps its bits

    def on_evaluation(self, record: dict) -> None:
        self.run_dir.append_record(record)
        if record["step"] == 0:
            self.log(accuracy_line(record["test_accuracy"], "before training"))

    def save(self, state: TrainState, progress: Progress, wait: bool = False) -> None:
        self.run_dir.check_still_here()
        self.store.save(state, {"config": self.config.to_dict(), "progress": dataclasses.asdict(progress),
                                "model": self.model_spec})
        if wait:
            self.store.wait()
        self.saved_step = state.step

    def should_stop(self) -> bool:
        # Every process stops after the same chunk, whichever of them got the signal, and says which.
        # The agreed answer, not the local flag: a signal that lands during the exchange is seen by
        # every process at the next check.
        agreed = max_over_processes(self.stop.signum or 0)
        if agreed and self.stop.signum is None:
            self.stop.signum = agreed
        return bool(agreed)


def _record_check(out: Path, config: Config | None = None, model: Model | None = None):
    """The check `CheckpointStore.find_usable` applies to a verified record: a train run's, whose
    model this command line rebuilds, and (given `config`) that the settings asked for continue."""
    def check(step: int, record: dict) -> None:
        if "grid" in record:  # another kind of run, whose checkpoints must stay
            raise ConfigError(f"{out} holds a jaxlin sweep, not a train run; continue it with "
                              f"jaxlin sweep --resume --output-dir {shlex.quote(str(out))}")
        saved, _ = _parse_record(record, out, step)
        rebuilt = build_model(saved)
        recorded = record.get("model")
        if recorded is not None and recorded != rebuilt.spec:
            raise ConfigError(f"--resume: checkpoint {step} in {out} is of a model that `jaxlin train` does not "
                              f"build ({_model_name(recorded)}); resume it the way it was started")
        if model is not None and model.spec != rebuilt.spec:
            raise ConfigError(f"--resume: checkpoint {step} in {out} is of model {rebuilt.describe()}, "
                              f"not {model.describe()}")
        if config is not None:
            _check_resumable(saved, config, step, out)

    return check


def _model_name(spec) -> str:
    return str(spec.get("name")) if isinstance(spec, dict) else "an unknown model"


def _parse_record(record: dict, out: Path, step: int) -> tuple[Config, Progress]:
    """The config and progress of a verified train record."""
    try:
        return Config.from_dict(record["config"]), Progress(**record["progress"])
    except (KeyError, TypeError, ValueError) as err:
        raise DamagedCheckpoint(f"{out / CHECKPOINT_DIR / str(step)}: unreadable run record ({err})") from err


def resumed_config(config: Config, explicit: set[str]) -> Config:
    """The config of the latest usable checkpoint in `config.output_dir` with the explicitly given
    settings applied; refuses settings that would not continue the same run. Looks only: the run
    that takes the directory's lock restores, verifies and sets damaged checkpoints aside."""
    out = Path(config.output_dir)
    if not (out / CHECKPOINT_DIR).is_dir():
        start = "start it with --overwrite" if RunDir(out).run_files() else "drop --resume to start"
        raise ConfigError(f"--resume: no checkpoints in {out} (nothing to resume; {start})")
    store = CheckpointStore(out, read_only=True)
    try:
        usable = store.find_usable(_record_check(out))
    finally:
        store.close()
    saved, _ = _parse_record(usable.record, out, usable.step)
    return _check_resumable(saved, saved.replace(**{name: getattr(config, name) for name in explicit}),
                            usable.step, out)


def _check_resumable(saved: Config, wanted: Config, step: int, out: Path) -> Config:
    conflicts = resume_conflicts(saved, wanted)
    if conflicts:
        raise ConfigError(f"--resume: settings differ from the checkpoint in {out}: {'; '.join(conflicts)}")
    if wanted.num_steps < step:
        raise ConfigError(f"--resume: --num-steps {wanted.num_steps} is below the checkpoint's step {step}")
    return wanted


def train_and_evaluate(config: Config, progress: bool = True, dry_run: bool = False, log=print,
                       eval_steps: list[int] | None = None, data: Datasets | None = None,
                       mode: str = "new", explicit: set[str] | None = None,
                       stop: StopRequest | None = None, figures: bool = True, figure_worker=None) -> dict | None:
    """The `jaxlin train` job; returns the metrics written (None for a dry run or nothing to do).

    mode: "new" refuses a directory that holds a run, "overwrite" replaces that run's files,
    "resume" continues from its latest checkpoint; with "resume", settings not in `explicit`
    come from the checkpoint. Test accuracy is measured at `eval_steps` (default: every
    `config.eval_every` steps); `data` skips loading when the caller already has it. `figures`
    False writes no PNG; `figure_worker` (a `figures.FigureWorker`) draws them when given.
    Raises `Stopped` after a SIGINT or SIGTERM (caught by `stop`, or by a handler of its own).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if stop is None:
        with StopRequest() as own:
            return train_and_evaluate(config, progress, dry_run, log, eval_steps, data, mode, explicit, own,
                                      figures, figure_worker)
    started = time.perf_counter()
    # The data may sit at another path on each host; everything else must agree.
    check_same_everywhere(json.dumps([config.replace(data_dir=None).to_dict(), mode], sort_keys=True))
    primary = is_primary()
    if not primary:  # process 0 reports; the others only train
        log = lambda line: None
    with failing_together(*USER_ERRORS):  # a process that cannot go on must not leave the others waiting
        if primary:
            check_writable(config.output_dir)
            RunDir(config.output_dir).check_available(mode)
        if mode == "resume":
            config = resumed_config(config, explicit or set())
        if config.data_dir:  # a resumed run may start elsewhere
            config = config.replace(data_dir=str(Path(config.data_dir).absolute()))
        model = build_model(config)
        if data is None and resolve_data_dir(config.data_dir) is None and config.source == "tfds":
            log(f"No --data-dir and no {DATA_DIR_ENV}: loading {config.dataset} through "
                f"tensorflow-datasets (it downloads on first use; offline, use --data-dir).")
        data = data or load_datasets(config.dataset, config.data_dir, config.source, progress=progress, log=log)
        config.validate(len(data.train))
    data_seconds = time.perf_counter() - started
    log(describe_run(config, data, model))
    if dry_run:
        log(f"Dry run: settings and data are valid; nothing trained, nothing written to {config.output_dir}.")
        return None
    stop.defer()
    if stop:  # a StopNow that something on the way swallowed
        raise Stopped(f"jaxlin: stopped by {stop.name} before training started; nothing saved", stop.exit_code)
    run_dir = (RunDir if primary else FollowerRunDir)(config.output_dir)
    with failing_together(*USER_ERRORS):
        run_dir.lock()
    try:
        return _train_in(run_dir, config, data, model, mode, stop, progress, log, eval_steps,
                         data_seconds, started, figures, figure_worker)
    finally:
        run_dir.unlock()


def _train_in(run_dir: RunDir, config: Config, data: Datasets, model: Model, mode: str, stop: StopRequest,
              progress: bool, log, eval_steps, data_seconds: float, started: float, figures: bool = True,
              figure_worker=None) -> dict | None:
    out = run_dir.path
    with failing_together(*USER_ERRORS):
        run_dir.check_available(mode)
        if mode == "overwrite":
            run_dir.remove_run()
    sync("jaxlin: output directory ready")  # process 0 has locked and cleared it
    store = CheckpointStore(out, keep=config.keep_checkpoints) if config.checkpoint_every != 0 else None
    start, records = None, []
    try:
        if mode == "resume":
            if store is None:
                raise ConfigError("--resume: checkpoints are off (--checkpoint-every 0)")
            with failing_together(*USER_ERRORS):  # every process verifies it before any is moved
                usable = store.find_usable(_record_check(out, config, model),
                                           lambda record: _initial_state(_parse_record(record, out, 0)[0], model),
                                           log=log)
            if is_primary():
                store.set_aside_damaged(usable.damaged, log)
            step, state = usable.step, usable.state
            saved_progress = _parse_record(usable.record, out, step)[1]
            if step == config.num_steps and run_dir.has_finished_run():
                log(f"The run in {out} already finished at step {step}; raise --num-steps to train on.")
                return None
            start = (state, saved_progress)
            records = run_dir.read_records(step)
            run_dir.unfinish()
            log(f"Resuming {out} from step {step} of {config.num_steps}.")
        hooks = _RunHooks(run_dir, store, config, stop, log, model)
        hooks.last_recorded_step = records[-1]["step"] if records else None
        result = fit(config, data, model, eval_steps=eval_steps, progress=progress and is_primary(), start=start,
                     hooks=hooks)
        if store:
            store.close()  # waits for the last save: a checkpoint reported is a checkpoint on disk
    except (CheckpointWriteError, OSError) as err:
        raise write_failed(err, store, run_dir, resume_command(out)) from err
    finally:
        if store:
            close_quietly(store)
    if result.stopped:
        raise Stopped(_stopped_message(stop, result, hooks, out, config), stop.exit_code or 1)
    evaluations = records + result.evaluations
    final = result.final
    log(accuracy_line(final["accuracy"], f"after {result.state.step} steps"))
    metrics = {
        "final_test_accuracy": final["accuracy"],
        "final_test_per_class_accuracy": final["per_class_accuracy"],
        "final_test_confusion_matrix": final["confusion_matrix"],
        "num_steps": result.state.step,
        "resumed_from_step": start[0].step if start else None,
        "evaluations": evaluations,
        "timings": {"data_load_seconds": data_seconds, **result.timings,
                    "total_seconds": time.perf_counter() - started},
        "device": result.device,
        "versions": library_versions(),
        "model": model.describe(),
        "config": result.config.used_settings(),
    }

    def write(staging: Path) -> None:
        tick = time.perf_counter()
        if figures:
            write_figures(staging, data, model, result.params, final, evaluations, worker=figure_worker)
        figures_seconds = time.perf_counter() - tick
        checkpoint.save_params(staging / PARAMS_FILE, result.params, model)
        metrics["timings"]["breakdown"] = _breakdown(result.timings, data_seconds, figures_seconds,
                                                     time.perf_counter() - tick - figures_seconds)
        (staging / METRICS_FILE).write_text(to_json(metrics, indent=2) + "\n")

    names = run_dir.publish(write)
    log(f"Wrote {', '.join(names)} to {out}")
    if model.first_dense_weights(result.params) is None:
        log(f"(No weights figure: the first layer of the {model.name} is not dense.)")
    if stop:  # a signal while the outputs were written: they are complete, say so and exit as asked
        raise Stopped(f"jaxlin: {stop.name} after the last step; the finished run is in {out}", stop.exit_code)
    return metrics


def _breakdown(timings: dict, data_seconds: float, figures_seconds: float, writing_seconds: float) -> dict:
    """Where this process's time went, from its start (see `timing`); phases not measured are None."""
    from jaxlin.runtime import compile_cache

    from jaxlin.runtime import timing
    return {
        "imports_seconds": timing.marks.get("imports"),  # interpreter start-up and imports
        "backend_start_seconds": timing.marks.get("backend_start"),
        "data_load_seconds": data_seconds,
        "compile_seconds": timings["compile_seconds"],
        "compile_cache": {"enabled": timing.marks.get("compile_cache_enabled", False), **compile_cache.counts()},
        "training_seconds": timings["train_seconds"],
        "evaluation_seconds": timings["eval_seconds"],
        "figures_seconds": figures_seconds,
        "writing_seconds": writing_seconds,
        "whole_process_seconds": timing.since_process_start(),  # until metrics.json was written
    }


def _initial_state(config: Config, model: Model) -> TrainState:
    # `config` is the checkpoint's: its optimizer fixes the optimizer state's structure.
    """The structure and dtypes of a fresh train state (what a checkpoint restores into)."""
    from jaxlin.training.trainer import make_optimizer

    params = jax.eval_shape(model.init, jax.random.key(config.seed))
    params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), params)
    return TrainState(params, make_optimizer(config).init(params), 0)


def write_failed(err: CheckpointWriteError | OSError, store: CheckpointStore | None, run_dir: RunDir,
                 resume: str) -> Exception:
    """The one line for a write that failed while training (a checkpoint, or metrics.jsonl when the
    directory filled up, became read-only or vanished): what failed, the last good checkpoint, how to
    resume. A lost peer is the runtime's failure, reported as such (cli.py: exit 1)."""
    out = run_dir.path
    # Moved or removed under the run (an in-flight save may have made a new directory at its path):
    # its checkpoints went wherever it went.
    if isinstance(err, RunDirGone) or not out.is_dir() or not run_dir.still_here():
        return checkpoint.CheckpointError(
            f"output dir {out} was moved or removed while the run was going; its checkpoints are wherever it "
            f"went: resume it there with --resume --output-dir pointing at it")
    if isinstance(err, OSError):
        err = CheckpointWriteError(f"cannot write {err.filename or out} ({err.strerror or err})", err)
    cause = err.cause
    if jax.process_count() > 1 and type(cause).__name__ in ("JaxRuntimeError", "XlaRuntimeError"):
        return cause
    good = store.saved_step if store is not None else None
    if good is None:
        return checkpoint.CheckpointError(f"{err}; no checkpoint of this run was completed")
    return checkpoint.CheckpointError(f"{err}; the last good checkpoint is step {good} in {store.directory}. "
                                      f"Free space or fix the directory, then resume with: {resume}")


def close_quietly(store: CheckpointStore) -> None:
    try:
        store.close()
    except checkpoint.CheckpointError:
        pass  # already reported, or a failure behind another error


def _stopped_message(stop: StopRequest, result: FitResult, hooks: _RunHooks, out: Path, config: Config) -> str:
    step = result.state.step
    why = stop.name or "a stop request"
    if hooks.saved_step == step:
        return (f"jaxlin: stopped by {why} at step {step} of {config.num_steps}; checkpoint saved in "
                f"{out / CHECKPOINT_DIR}. Resume with: {resume_command(out)}")
    if not hooks.checkpoints:
        return f"jaxlin: stopped by {why} at step {step}; checkpoints are off (--checkpoint-every 0), nothing saved"
    return f"jaxlin: stopped by {why} at step {step}, before any step was trained; nothing new saved"


def evaluate_saved(params_path: str, dataset: str = "mnist", data_dir: str | None = None,
                   model_name: str | None = None, device: str = "auto", source: str = "auto") -> dict:
    """The `jaxlin evaluate` job: test-set metrics of a saved params file."""
    params, model = checkpoint.load_params(params_path)
    if model_name is not None and model.name != model_name:
        raise checkpoint.CheckpointError(
            f"{params_path}: params are for model {model.describe()}, not {model_name}")
    data = load_datasets(dataset, data_dir, source, log=lambda line: print(line, file=sys.stderr))
    test = evaluate(model.apply, params, data.test, batch_size=model.eval_batch_size,
                    placement=resolve_placement(device))
    return {
        "params": str(params_path),
        "model": model.describe(),
        "test_accuracy": test["accuracy"],
        "num_examples": test["num_examples"],
        "per_class_accuracy": test["per_class_accuracy"],
        "confusion_matrix": test["confusion_matrix"],
    }
