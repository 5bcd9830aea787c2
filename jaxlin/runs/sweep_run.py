"""The `jaxlin sweep` job: its output directory, host loop, checkpoints and outputs.

The compiled part (members, freezing, selection, memory) is in `sweep`. The directory
follows `jaxlin train`'s rules (`rundir`): checked before data is loaded, locked while in
use, `--overwrite` and `--resume`, records streamed to `metrics.jsonl` (one line per
evaluation, every member's validation accuracy), checkpoints through orbax, and the
outputs (`sweep.json` last, `sweep.png`, `best/`) published as a whole.
"""

from __future__ import annotations

import dataclasses
import shlex
import time
from pathlib import Path

import jax
import numpy as np

from jaxlin.runs import params_file as checkpoint
from jaxlin.config import Config, ConfigError
from jaxlin.data.datasets import Datasets, load_datasets
from jaxlin.training.evaluate import Evaluator
from jaxlin.models import Model
from jaxlin.runtime.devices import MODELS_AXIS, resolve_placement, to_host
from jaxlin.runs.train_run import Stopped, build_model, close_quietly, library_versions, write_failed, write_figures
from jaxlin.runs.rundir import METRICS_FILE, PARAMS_FILE, RunDir, check_writable, to_json
from jaxlin.training.schedule import checkpoint_schedule, chunks, eval_schedule
from jaxlin.runtime.signals import StopRequest
from jaxlin.runs.checkpoints import CHECKPOINT_DIR, CheckpointStore, CheckpointWriteError, DamagedCheckpoint
from jaxlin.training.state import TrainState
from jaxlin.training.sweep import (BEST_DIR, HOST_OVERHEAD_BYTES, MEMORY_FRACTION, SWEEP_FIGURE, SWEEP_FILE,
                                   SWEEP_LAYOUT, Grid, SweepTrainer, best_member, check_resumable, describe_member,
                                   estimate_memory, gib, memory_limit, resume_command)

MODES = ("new", "overwrite", "resume")
TABLE_ROWS = 24  # longer sweeps print their best rows only


def run_sweep(config: Config, grid: Grid, progress: bool = True, dry_run: bool = False, log=print,
              mode: str = "new", explicit: set[str] | None = None, stop: StopRequest | None = None,
              data: Datasets | None = None) -> dict | None:
    """The `jaxlin sweep` job; returns what sweep.json holds (None for a dry run or nothing to do).

    mode and `explicit` as in `run.train_and_evaluate`; raises `Stopped` after SIGINT/SIGTERM."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if stop is None:
        with StopRequest() as own:
            return run_sweep(config, grid, progress, dry_run, log, mode, explicit, own, data)
    started = time.perf_counter()
    check_writable(config.output_dir)
    RunDir(config.output_dir, SWEEP_LAYOUT).check_available(mode)
    if mode == "resume":
        config, grid = _resumed_settings(config, grid, explicit or set())
    if config.data_dir:
        config = config.replace(data_dir=str(Path(config.data_dir).absolute()))
    if config.loop != "fused":
        raise ConfigError(f"--loop {config.loop}: a sweep trains its members in the fused loop only")
    model = build_model(config)
    data = data or load_datasets(config.dataset, config.data_dir, config.source, progress=progress, log=log)
    config.validate(len(data.train))
    members = grid.members(config)
    placement = resolve_placement(config.device, config.devices, axis=MODELS_AXIS)
    need = estimate_memory(config, model, len(members), placement.num_devices, data)
    limit, what = memory_limit(placement)
    log(_describe(config, grid, members, data, model, placement.describe(), need, limit, what))
    if what == "host memory":  # CPU devices (simulated ones too) share the host's memory
        need = need * placement.num_devices + HOST_OVERHEAD_BYTES
        where = f"on this host ({placement.num_devices} CPU device{'s' if placement.num_devices > 1 else ''})"
    else:
        where = "per device"
    if need > MEMORY_FRACTION * limit:
        raise ConfigError(f"a sweep of {len(members)} members needs about {gib(need)} {where}, more than "
                          f"{MEMORY_FRACTION:.0%} of the {gib(limit)} of {what}; sweep fewer members or "
                          f"spread them over more --devices")
    if dry_run:
        log(f"Dry run: settings and data are valid; nothing trained, nothing written to {config.output_dir}.")
        return None
    stop.defer()
    if stop:
        raise Stopped(f"jaxlin: stopped by {stop.name} before training started; nothing saved", stop.exit_code)
    with RunDir(config.output_dir, SWEEP_LAYOUT) as run_dir:
        return _sweep_in(run_dir, config, grid, members, data, model, placement, mode, stop, progress, log,
                         time.perf_counter() - started, started)


def _describe(config: Config, grid: Grid, members: list[Config], data: Datasets, model: Model, device: str,
              need: int, limit: int, what: str) -> str:
    varied = [f"{name.replace('_', ' ')} {_listed(values)}"
              for name, values in dataclasses.asdict(grid).items() if values is not None]
    shared = len({m.data_seed for m in members}) == 1
    order = (f"one batch order shared by all (data seed {members[0].data_seed})" if shared
             else "a batch order per data seed")
    lines = [f"Data: {data.name} from {data.source}: train {len(data.train)}, validation {len(data.validation)}, "
             f"test {len(data.test)}",
             f"Sweep: {len(members)} member{'s' if len(members) != 1 else ''} of {model.describe()} "
             f"({'; '.join(varied) or 'one member'}); "
             f"optimizer {config.optimizer}; batch {config.batch_size}; {config.num_steps} steps; {order}",
             f"Device: {device}; memory: about {gib(need)} per device of {gib(limit)} ({what})",
             "Selection: the highest final validation accuracy; test accuracy is reported, never used to choose"]
    if model.name == "linear" and grid.seeds and len(grid.seeds) > 1 and shared:
        lines.append("Note: the linear model starts from zeros, so members that differ only in their seed train "
                     "identically; --data-seeds gives them their own batch orders")
    return "\n".join(lines)


def _listed(values) -> str:
    """A grid axis for one line: every value, or the first and last few of a long one."""
    shown = [str(v) for v in values]
    if len(shown) > 8:
        return f"{', '.join(shown[:3])}, ..., {', '.join(shown[-2:])} ({len(shown)} values)"
    return ", ".join(shown)


def _resumed_settings(config: Config, grid: Grid, explicit: set[str]) -> tuple[Config, Grid]:
    out = Path(config.output_dir)
    if not (out / CHECKPOINT_DIR).is_dir():
        raise ConfigError(f"--resume: no checkpoints in {out} (nothing to resume; drop --resume to start)")
    store = CheckpointStore(out, read_only=True)
    try:
        usable = store.find_usable(_sweep_record_check(out))
    finally:
        store.close()
    saved, saved_grid = _parse_sweep_record(usable.record, out, usable.step)
    return check_resumable(saved, saved_grid, config, grid, explicit, usable.step, out)


def _sweep_record_check(out: Path):
    """A verified record must be a sweep's (a train run's checkpoints are refused, never set aside)."""
    def check(step: int, record: dict) -> None:
        if "grid" not in record:
            raise ConfigError(f"{out} holds a jaxlin train run, not a sweep; continue it with "
                              f"jaxlin train --resume --output-dir {shlex.quote(str(out))}")
        _parse_sweep_record(record, out, step)

    return check


def _parse_sweep_record(record: dict, out: Path, step: int) -> tuple[Config, Grid]:
    try:
        return Config.from_dict(record["config"]), Grid.from_dict(record["grid"])
    except (KeyError, TypeError, ValueError) as err:
        raise DamagedCheckpoint(f"{out / CHECKPOINT_DIR / str(step)}: unreadable run record ({err})") from err


@dataclasses.dataclass
class _Progress:
    """Per member, the losses since the previous evaluation (what a checkpoint carries with the state)."""

    loss_sum: list[float]
    loss_count: list[int]
    elapsed_seconds: float = 0.0


class _SweepLoop:
    def __init__(self, trainer: SweepTrainer, run_dir: RunDir, store: CheckpointStore | None, config: Config,
                 grid: Grid, stop: StopRequest, log, progress: _Progress, num_validation: int):
        self.trainer, self.run_dir, self.store, self.config, self.grid = trainer, run_dir, store, config, grid
        self.stop, self.log, self.num_validation = stop, log, num_validation
        self.loss_sum = np.array(progress.loss_sum, np.float64)
        self.loss_count = np.array(progress.loss_count, np.int64)
        self.elapsed_before, self.started = progress.elapsed_seconds, time.perf_counter()
        self.records: list[dict] = []
        self.train_seconds = self.eval_seconds = 0.0
        self.steps_trained = 0
        self.saved_step: int | None = None
        self.reported: set[int] = set()

    def progress(self) -> _Progress:
        return _Progress(self.loss_sum.tolist(), self.loss_count.tolist(),
                         self.elapsed_before + time.perf_counter() - self.started)

    def save(self, state: TrainState, wait: bool = False) -> None:
        record = {"config": self.config.to_dict(), "grid": self.grid.to_dict(),
                  "progress": dataclasses.asdict(self.progress()), "model": self.trainer.model.spec}
        self.run_dir.check_still_here()
        self.store.save(state, record)
        if wait:
            self.store.wait()
        self.saved_step = state.step

    def evaluate(self, state: TrainState) -> np.ndarray:
        tick = time.perf_counter()
        accuracy = self.trainer.validation(state.params) / self.num_validation
        self.eval_seconds += time.perf_counter() - tick
        losses = [s / c if c else None for s, c in zip(self.loss_sum.tolist(), self.loss_count.tolist())]
        record = {"step": state.step, "validation_accuracy": accuracy.tolist(), "train_loss": losses,
                  "elapsed_seconds": round(self.progress().elapsed_seconds, 3)}
        self.loss_sum[:] = 0
        self.loss_count[:] = 0
        self.records.append(record)
        self.run_dir.append_record(record)
        return accuracy

    def add_losses(self, losses: np.ndarray, start: int, frozen_at: np.ndarray) -> None:
        """Sums each member's losses of the steps it trained (not those from its freezing on)."""
        step_numbers = start + 1 + np.arange(losses.shape[0])[:, None]
        trained = (frozen_at[None, :] < 0) | (step_numbers < frozen_at[None, :])
        self.loss_sum += np.where(trained, losses, 0.0).sum(axis=0, dtype=np.float64)
        self.loss_count += trained.sum(axis=0)
        for member in np.flatnonzero(frozen_at >= 0):
            if member not in self.reported:
                self.reported.add(int(member))
                lr = self.trainer.members[member].learning_rate
                self.log(f"Member {member} (learning rate {lr}) diverged at step {frozen_at[member]}: frozen; "
                         f"the others go on")

    def run(self, state: TrainState, show_progress: bool, fresh: bool, last_recorded: int | None) -> TrainState:
        from tqdm.auto import tqdm

        config = self.config
        evals = eval_schedule(config.num_steps, config.eval_every)
        saves = checkpoint_schedule(config.num_steps, config.checkpoint_every if self.store else 0, evals)
        if fresh and self.store:
            self.save(state, wait=True)
        elif self.store:
            self.saved_step = state.step  # a resumed sweep's first state is its checkpoint
        if state.step in evals:
            if last_recorded == state.step:  # resumed after this step's evaluation: its window is closed
                self.loss_sum[:] = 0
                self.loss_count[:] = 0
            else:
                self.evaluate(state)
        bar = tqdm(total=config.num_steps, initial=state.step, disable=not show_progress, unit="step", leave=False)
        with bar:
            for start, length in chunks(state.step, config.num_steps, config.steps_per_call, evals, saves):
                if self.stop:
                    # A stop that came after the last chunk's save check still leaves its state on disk.
                    if self.store and self.saved_step != state.step:
                        self.save(state)
                    break
                tick, compiled_before = time.perf_counter(), self.trainer.compile_seconds
                state, losses = self.trainer.run_chunk(state, length)
                losses = np.asarray(to_host(losses))[:, :self.trainer.num_members]
                self.train_seconds += time.perf_counter() - tick - (self.trainer.compile_seconds - compiled_before)
                self.steps_trained += length
                self.add_losses(losses, start, self.trainer.frozen_at(state))
                if self.store and (state.step in saves or self.stop):
                    self.save(state)
                if state.step in evals:
                    accuracy = self.evaluate(state)
                    bar.set_postfix({"best_val_acc": f"{np.max(accuracy):.2%}"}, refresh=False)
                bar.update(length)
        return state


def _restore(store: CheckpointStore, trainer: SweepTrainer, log) -> tuple[TrainState, _Progress, int]:
    """The newest sweep checkpoint that verifies, restored onto the trainer's devices; damaged newer ones
    are set aside."""
    like = jax.tree.map(np.asarray, to_host(trainer.init_state()))
    usable = store.find_usable(_sweep_record_check(store.run_dir), lambda record: like, log=log)
    store.set_aside_damaged(usable.damaged, log)
    return trainer.place(usable.state), _Progress(**usable.record["progress"]), usable.step


def _sweep_in(run_dir: RunDir, config: Config, grid: Grid, members: list[Config], data: Datasets, model: Model,
              placement, mode: str, stop: StopRequest, progress: bool, log, data_seconds: float,
              started: float) -> dict | None:
    out = run_dir.path
    run_dir.check_available(mode)
    if mode == "overwrite":
        run_dir.remove_run()
    store = CheckpointStore(out, keep=config.keep_checkpoints) if config.checkpoint_every != 0 else None
    records: list[dict] = []
    with jax.default_device(placement.local_device):
        trainer = SweepTrainer(config, members, data, model, placement)
        try:
            if mode == "resume":
                if store is None:
                    raise ConfigError("--resume: checkpoints are off (--checkpoint-every 0)")
                state, saved_progress, step = _restore(store, trainer, log)
                if step == config.num_steps and run_dir.has_finished_run():
                    log(f"The sweep in {out} already finished at step {step}; raise --num-steps to train on.")
                    return None
                records = run_dir.read_records(step)
                run_dir.unfinish()
                log(f"Resuming {out} from step {step} of {config.num_steps}.")
            else:
                state = trainer.init_state()
                saved_progress = _Progress([0.0] * len(members), [0] * len(members))
            loop = _SweepLoop(trainer, run_dir, store, config, grid, stop, log, saved_progress,
                              len(data.validation))
            state = loop.run(state, progress, fresh=mode != "resume",
                             last_recorded=records[-1]["step"] if records else None)
            if store:
                store.close()  # waits for the last save
        except (CheckpointWriteError, OSError) as err:
            raise write_failed(err, store, run_dir, resume_command(out)) from err
        finally:
            if store:
                close_quietly(store)
        if state.step < config.num_steps:
            if loop.saved_step == state.step:
                message = (f"jaxlin: stopped by {stop.name} at step {state.step} of {config.num_steps}; checkpoint "
                           f"saved in {out / CHECKPOINT_DIR}. Resume with: {resume_command(out)}")
            else:
                message = f"jaxlin: stopped by {stop.name} at step {state.step}; nothing new saved"
            raise Stopped(message, stop.exit_code or 1)
        summary = _finish(trainer, state, loop, records + loop.records, config, grid, data, model, placement,
                          data_seconds, started)
    best = summary["best"]
    best_params = trainer.member_params(state, best) if best is not None else None
    final = Evaluator(model.apply, data.test.images_uint8, data.test.labels, model.eval_batch_size)(best_params) \
        if best is not None else None

    def write(staging: Path) -> None:
        from jaxlin.runs import plots  # matplotlib: only when figures are drawn

        curves = np.array([[np.nan if a is None else a for a in r["validation_accuracy"]]
                           for r in summary["evaluations"]]).T
        plots.plot_sweep(summary["members"], [r["step"] for r in summary["evaluations"]], curves, best,
                         staging / SWEEP_FIGURE)
        if best is not None:
            _write_best(staging / BEST_DIR, summary, best, best_params, final, data, model, members[best])
        (staging / SWEEP_FILE).write_text(to_json(summary, indent=2) + "\n")

    names = run_dir.publish(write)
    log(format_table(summary))
    log(f"Wrote {', '.join(names)} to {out}")
    if stop:
        raise Stopped(f"jaxlin: {stop.name} after the last step; the finished sweep is in {out}", stop.exit_code)
    return summary


def _finish(trainer: SweepTrainer, state: TrainState, loop: _SweepLoop, evaluations: list[dict], config: Config,
            grid: Grid, data: Datasets, model: Model, placement, data_seconds: float, started: float) -> dict:
    """sweep.json: every member's hyperparameters, curve and final accuracies; the best by validation."""
    frozen_at = trainer.frozen_at(state)
    diverged = [int(f) if f >= 0 else None for f in frozen_at]
    validation = evaluations[-1]["validation_accuracy"]
    best = best_member(validation, diverged)  # chosen before the test set is looked at
    tick = time.perf_counter()
    test = (trainer.test(state.params) / len(data.test)).tolist() if trainer.test else [None] * len(validation)
    loop.eval_seconds += time.perf_counter() - tick
    members = []
    for i, member in enumerate(trainer.members[:trainer.num_members]):
        members.append({"index": i, **describe_member(member, config), "diverged_at_step": diverged[i],
                        "validation_accuracy": validation[i], "test_accuracy": test[i],
                        "validation_curve": [r["validation_accuracy"][i] for r in evaluations],
                        "final_train_loss": evaluations[-1]["train_loss"][i]})
    num_members = trainer.num_members
    train_seconds = loop.train_seconds
    return {
        "num_members": num_members,
        "best": best,
        "best_validation_accuracy": validation[best] if best is not None else None,
        "best_test_accuracy": test[best] if best is not None else None,
        "selection": "highest final validation accuracy (5,000 images held out of training) among members "
                     "that did not diverge; lowest index on ties",
        "shared_batch_order": trainer.shared_order,
        "members": members,
        "evaluations": evaluations,
        "num_steps": state.step,
        "timings": {"data_load_seconds": data_seconds, "compile_seconds": trainer.compile_seconds,
                    "train_seconds": train_seconds, "eval_seconds": loop.eval_seconds,
                    "steps_per_second": loop.steps_trained / train_seconds if train_seconds > 0 else None,
                    "model_steps_per_second": num_members * loop.steps_trained / train_seconds
                    if train_seconds > 0 else None,
                    "total_seconds": time.perf_counter() - started},
        "device": placement.describe(),
        "versions": library_versions(),
        "model": model.describe(),
        "grid": grid.to_dict(),
        "config": {k: v for k, v in config.used_settings().items()
                   if k not in ("learning_rate", "momentum", "seed", "data_seed", "dot_layout")},
    }


def _write_best(directory: Path, summary: dict, best: int, params, final: dict, data: Datasets, model: Model,
                member: Config) -> None:
    directory.mkdir()
    evaluations = [{"step": r["step"], "validation_accuracy": r["validation_accuracy"][best],
                    "train_loss": r["train_loss"][best], "elapsed_seconds": r["elapsed_seconds"]}
                   for r in summary["evaluations"]]
    write_figures(directory, data, model, params, final, evaluations, curve_key="validation_accuracy")
    checkpoint.save_params(directory / PARAMS_FILE, params, model)
    metrics = {"member": best, "final_test_accuracy": final["accuracy"],
               "final_validation_accuracy": summary["best_validation_accuracy"],
               "final_test_per_class_accuracy": final["per_class_accuracy"],
               "final_test_confusion_matrix": final["confusion_matrix"], "num_steps": summary["num_steps"],
               "evaluations": evaluations, "model": model.describe(),
               "config": {k: v for k, v in member.used_settings().items() if k != "dot_layout"},
               "versions": summary["versions"]}
    (directory / METRICS_FILE).write_text(to_json(metrics, indent=2) + "\n")


def _percent(value) -> str:
    return "-" if value is None else f"{value:.2%}"


def format_table(summary: dict) -> str:
    """The members (the best rows of a long sweep), best marked, and the sweep's result."""
    members = summary["members"]
    has_momentum = members and "momentum" in members[0]
    several_seeds = len({m["seed"] for m in members}) > 1
    several_data_seeds = len({m["data_seed"] for m in members}) > 1
    header = ["", "member", "learning rate"] + (["momentum"] if has_momentum else []) + \
        (["seed"] if several_seeds else []) + (["data seed"] if several_data_seeds else []) + \
        ["val acc", "test acc", "diverged"]
    rows = members
    if len(members) > TABLE_ROWS:
        rows = sorted(members, key=lambda m: (m["diverged_at_step"] is not None,
                                              -(m["validation_accuracy"] or 0), m["index"]))[:TABLE_ROWS]
    body = []
    for m in rows:
        row = ["*" if m["index"] == summary["best"] else "", str(m["index"]), f"{m['learning_rate']:g}"]
        row += [f"{m['momentum']:g}"] if has_momentum else []
        row += ([str(m["seed"])] if several_seeds else []) + ([str(m["data_seed"])] if several_data_seeds else [])
        row += [_percent(m["validation_accuracy"]), _percent(m["test_accuracy"]),
                f"at step {m['diverged_at_step']}" if m["diverged_at_step"] is not None else ""]
        body.append(row)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *body]]
    if len(rows) < len(members):
        lines.append(f"(the best {len(rows)} of {len(members)} members by validation accuracy; all in sweep.json)")
    timings = summary["timings"]
    speed = f"{timings['model_steps_per_second']:,.0f} model-steps/s" if timings["model_steps_per_second"] else ""
    if summary["best"] is None:
        lines.append(f"Every member diverged; no best member. {speed}")
    else:
        best_line = (f"Best member {summary['best']} (by validation accuracy "
                     f"{summary['best_validation_accuracy']:.2%}): test accuracy {summary['best_test_accuracy']:.2%}.")
        lines.append(f"{best_line} {speed}")
    return "\n".join(lines)
