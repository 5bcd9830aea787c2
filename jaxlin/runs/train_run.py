"""The `jaxlin train` run kind: one model, its test-set records, and the tutorial's outputs.

The session (`session.run`) checks the directory, resumes, locks, drives the loop and publishes;
this kind says what is particular to a single model: the `training.trainer.Trainer`, records of
test accuracy (the tutorial's "Accuracy on test-set" line at step 0), and a finished run's
metrics.json, figures and params.npz.
"""

from __future__ import annotations

import time
from pathlib import Path

from jaxlin import optimizers
from jaxlin.config import Config, ConfigError, resume_conflicts
from jaxlin.data.datasets import Datasets
from jaxlin.models import Model
from jaxlin.runs import params_file
from jaxlin.runs.outputs import accuracy_line, library_versions, write_figures
from jaxlin.runs.rundir import METRICS_FILE, PARAMS_FILE, TRAIN_LAYOUT, to_json
from jaxlin.runs.tensorboard import Curve
from jaxlin.runs.session import Outcome, RunKind, Session, build_model, recorded_data, run, saved_config
from jaxlin.runs.session import resume_command as _resume_command
from jaxlin.runtime import timing
from jaxlin.runtime.devices import Placement, resolve_placement, to_host
from jaxlin.runtime.profiling import ProfileSteps
from jaxlin.runtime.signals import StopRequest
from jaxlin.training.schedule import eval_schedule
from jaxlin.training import precision
from jaxlin.training.trainer import Trainer

__all__ = ["TrainRun", "describe_run", "resume_command", "train_and_evaluate"]


def resume_command(out: Path) -> str:
    return _resume_command("train", out)


def describe_run(config: Config, data: Datasets, model: Model, placement: Placement) -> str:
    opt = optimizers.describe(config)
    seeds = f"seed {config.seed}" + (f", data seed {config.data_seed}" if config.data_seed is not None else "")
    return (
        f"Data: {data.describe()}\n"
        f"Model: {model.describe()}; optimizer {opt}; batch {config.batch_size}; "
        f"{config.num_steps} steps; {describe_loop(config, model, placement)}; {seeds}; device {placement.describe()}"
        f"{precision.describe(config)}"
    )


def describe_loop(config: Config, model: Model, placement: Placement) -> str:
    """The loop, with what the fixed rules choose for it when they leave the plain scan and XLA's defaults
    ("fused loop (a host loop of one-step chunks; XLA's own convolutions)" for the CNN on a CPU)."""
    from jaxlin.runtime import chunk_form, cpu_convolutions

    parts = []
    if config.loop == "fused" and chunk_form.choose(config, model, placement) == "host-loop":
        parts.append("a host loop of one-step chunks")
    if (cpu_convolutions.choose(config, model, placement) == "xla" and placement.devices[0].platform == "cpu"
            and chunk_form.has_convolution(model)):
        parts.append("XLA's own convolutions")
    return f"{config.loop} loop" + (f" ({'; '.join(parts)})" if parts else "")


def _model_name(spec) -> str:
    return str(spec.get("name")) if isinstance(spec, dict) else "an unknown model"


def check_resumable(saved: Config, wanted: Config, step: int, out: Path) -> Config:
    """`wanted` when it continues the run `saved` describes (at `step`, in `out`); else ConfigError."""
    conflicts = resume_conflicts(saved, wanted)
    if conflicts:
        raise ConfigError(f"--resume: settings differ from the checkpoint in {out}: {'; '.join(conflicts)}")
    if wanted.num_steps < step:
        raise ConfigError(f"--resume: --num-steps {wanted.num_steps} is below the checkpoint's step {step}")
    return wanted


class TrainRun(RunKind):
    """`jaxlin train`: test accuracy at `eval_steps` (default: every `config.eval_every` steps and
    the last); `figures` False writes no PNG; `figure_worker` draws them when given."""

    command, noun, layout = "train", "run", TRAIN_LAYOUT

    def __init__(self, eval_steps: list[int] | None = None, figures: bool = True, figure_worker=None):
        self.eval_steps, self.figures, self.figure_worker = eval_steps, figures, figure_worker

    def record_check(self, out: Path, config: Config | None = None, model: Model | None = None):
        def check(step: int, record: dict) -> None:
            saved = saved_config(record, out, step)
            rebuilt = build_model(saved, recorded_data(record))  # for the data the run was trained on
            recorded = record.get("model")
            if recorded is not None and recorded != rebuilt.spec:
                raise ConfigError(f"--resume: checkpoint {step} in {out} is of a model that `jaxlin train` does "
                                  f"not build ({_model_name(recorded)}); resume it the way it was started")
            if model is not None and model.spec != rebuilt.spec:
                raise ConfigError(f"--resume: checkpoint {step} in {out} is of model {rebuilt.describe()}, "
                                  f"not {model.describe()}")
            if config is not None:
                check_resumable(saved, config, step, out)

        return check

    def resumed_settings(self, record: dict, step: int, out: Path, config: Config, explicit: set[str]) -> Config:
        saved = saved_config(record, out, step)
        return check_resumable(saved, saved.replace(**{name: getattr(config, name) for name in explicit}), step, out)

    def plan(self, config: Config, data: Datasets, model: Model) -> tuple[Placement, str]:
        with timing.marks.phase("planning"):
            optimizers.check_builds(config, model)  # a bad --optimizer: one line, before anything is written
            placement = resolve_placement(config.device, config.devices, config.batch_size)
            return placement, describe_run(config, data, model, placement)

    def trainer(self, config: Config, data: Datasets, model: Model, placement: Placement) -> Trainer:
        with timing.marks.phase("trainer_setup"):  # the data placed on the device, the update built
            trainer = Trainer(config, data, model, placement)
        # The loop's own time is measured from here to `finish` (see `_breakdown`).
        self._loop_started, self._checkpoint_before_loop = time.perf_counter(), timing.marks.get("checkpoint", 0.0)
        return trainer

    def evals(self, config: Config):
        return eval_schedule(config.num_steps, config.eval_every, self.eval_steps)

    def tensorboard_curves(self, config: Config) -> list[Curve]:
        return [Curve("", "test_accuracy", learning_rate=optimizers.learning_rate_schedule(config))]

    def on_record(self, record: dict) -> str | None:
        if record["step"] == 0:
            return accuracy_line(record["test_accuracy"], "before training")
        return None

    def finish(self, session: Session, trainer: Trainer, state, loop, evaluations: list[dict]) -> Outcome:
        data, model = session.data, session.model
        loop_seconds = time.perf_counter() - self._loop_started
        checkpoint_in_loop = timing.marks.get("checkpoint", 0.0) - self._checkpoint_before_loop
        with timing.marks.phase("final_evaluation"):
            final = trainer.evaluator(state.params)
            params = to_host(state.params)
        finishing = time.perf_counter()
        timings = loop.timings()
        metrics = {
            "final_test_accuracy": final["accuracy"],
            "final_test_per_class_accuracy": final["per_class_accuracy"],
            "final_test_confusion_matrix": final["confusion_matrix"],
            "num_steps": state.step,
            "resumed_from_step": session.resumed_from,
            "evaluations": evaluations,
            # The same data-load time as the breakdown's (loading, checking, fingerprinting).
            "timings": {"data_load_seconds": timing.marks.get("data_load", session.data_seconds), **timings,
                        "total_seconds": time.perf_counter() - session.started},
            "device": session.placement.describe(),
            "data": data.summary(),
            "versions": library_versions(),
            "model": model.describe(),
            "optimizer": optimizers.describe(trainer.config),  # what trained, as the run's log said
            "config": trainer.config.used_settings(),
        }
        if loop.trace is not None and loop.trace.record() is not None:  # --profile: this session's trace
            metrics["profile"] = loop.trace.record()

        notes: list[str] = []  # figures left out, said after the outputs are published
        timing.marks.add("finishing", time.perf_counter() - finishing)  # the metrics above, the library versions

        def write(staging: Path) -> None:
            tick = time.perf_counter()
            if self.figures:
                notes.extend(write_figures(staging, data, model, params, final, evaluations, worker=self.figure_worker))
            figures_seconds = time.perf_counter() - tick
            params_file.save_params(staging / PARAMS_FILE, params, model, data.image_shape)
            metrics["timings"]["breakdown"] = _breakdown(timings, loop_seconds, checkpoint_in_loop, figures_seconds,
                                                         time.perf_counter() - tick - figures_seconds)
            (staging / METRICS_FILE).write_text(to_json(metrics, indent=2) + "\n")

        return Outcome(metrics, write, [accuracy_line(final["accuracy"], f"after {state.step} steps")], notes)


def _breakdown(timings: dict, loop_seconds: float, checkpoint_in_loop: float, figures_seconds: float,
               writing_seconds: float) -> dict:
    """Where this process's time went, from its start (see `timing`) until metrics.json was written: phases
    that do not overlap, phases not measured None (imports, in a run started from Python), and
    `other_seconds`, the whole less every phase (what no phase accounts for).

    `loop_seconds` is the wall time from the trainer's start to `finish`: the loop's compile, training,
    evaluation and checkpoint phases happen in it (`checkpoint_in_loop` of the "checkpoint" mark's), and
    what the host did there besides is `loop_host_seconds`."""
    from jaxlin.runtime import compile_cache

    marks = timing.marks
    checkpoint = marks.get("checkpoint", 0.0) + timings.get("checkpoint_seconds", 0.0)
    loop_phases = (timings["compile_seconds"] + timings["train_seconds"] + timings["eval_seconds"]
                   + timings.get("checkpoint_seconds", 0.0) + checkpoint_in_loop + timings.get("profile_seconds", 0.0))
    phases = {
        "imports_seconds": marks.get("imports"),  # interpreter start-up, imports, argument parsing
        "figure_worker_start_seconds": marks.get("figure_worker_start", 0.0),
        "distributed_start_seconds": marks.get("distributed_start", 0.0),
        "backend_start_seconds": marks.get("backend_start"),  # compilation cache and JAX's backend
        "directory_seconds": marks.get("directory", 0.0),  # checking, locking, clearing the output dir
        "data_load_seconds": marks.get("data_load", 0.0),  # read, checked, fingerprinted
        "planning_seconds": marks.get("planning", 0.0),  # the optimizer's check, the devices
        "trainer_setup_seconds": marks.get("trainer_setup", 0.0),  # the data on the device, the update built
        "compile_seconds": timings["compile_seconds"],
        "training_seconds": timings["train_seconds"],
        "evaluation_seconds": timings["eval_seconds"],
        "checkpoint_seconds": checkpoint,  # orbax's import and store, every save, the wait for the last
        # --profile's waits for the device and its writing of the trace (only in a profiled run's breakdown)
        **({"profile_seconds": timings["profile_seconds"]} if "profile_seconds" in timings else {}),
        "loop_host_seconds": max(0.0, loop_seconds - loop_phases),  # the first state, records' setup, progress bar
        "final_evaluation_seconds": marks.get("final_evaluation", 0.0),  # and the params copied to the host
        "finishing_seconds": marks.get("finishing", 0.0),  # the metrics gathered, library versions
        "figures_seconds": figures_seconds,
        "writing_seconds": writing_seconds,  # params.npz and the breakdown (metrics.json's own write is not in it)
    }
    whole = timing.since_process_start()
    return {**phases,
            "compile_cache": {"enabled": marks.get("compile_cache_enabled", False), **compile_cache.counts()},
            "other_seconds": whole - sum(v for v in phases.values() if v is not None),
            "whole_process_seconds": whole}


def train_and_evaluate(config: Config, progress: bool = True, dry_run: bool = False, log=print,
                       eval_steps: list[int] | None = None, data: Datasets | None = None,
                       mode: str = "new", explicit: set[str] | None = None,
                       stop: StopRequest | None = None, figures: bool = True, figure_worker=None,
                       tensorboard: bool = False, profile: ProfileSteps | None = None) -> dict | None:
    """The `jaxlin train` job; returns the metrics written (None for a dry run or nothing to do).

    mode: "new" refuses a directory that holds a run, "overwrite" replaces that run's files,
    "resume" continues from its latest checkpoint; with "resume", settings not in `explicit`
    come from the checkpoint. Test accuracy is measured at `eval_steps` (default: every
    `config.eval_every` steps); `data` skips loading when the caller already has it. `figures`
    False writes no PNG; `figure_worker` (a `figure_worker.FigureWorker`) draws them when given.
    `tensorboard` writes the records as TensorBoard event files too (`runs.tensorboard`); `profile`
    traces those steps with `jax.profiler` (`runtime.profiling.ProfileSteps`; `ProfileSteps()`: the
    default window). Raises `Stopped` after a SIGINT or SIGTERM (caught by `stop`, or by a handler of its own).
    """
    return run(TrainRun(eval_steps, figures, figure_worker), config, mode, explicit, stop, progress, dry_run,
               data, log, tensorboard=tensorboard, profile=profile)
