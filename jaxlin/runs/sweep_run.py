"""The `jaxlin sweep` run kind: many members in one compiled program, chosen by validation.

The compiled part (members, freezing, memory) is in `training.sweep`; the session
(`session.run`) is `jaxlin train`'s: the directory checked before data is loaded, locked while in
use, `--overwrite` and `--resume`, several processes, the agreed stop. This kind adds the grid to
the checkpoint record, records every member's validation accuracy (`metrics.jsonl`, one line per
evaluation), and writes `sweep.json` (last), `sweep.png` and `best/` as a whole.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from jaxlin import optimizers
from jaxlin.config import Config, ConfigError, resume_conflicts
from jaxlin.data.datasets import Datasets
from jaxlin.models import Model
from jaxlin.runs import params_file
from jaxlin.runs.checkpoints import DamagedCheckpoint
from jaxlin.runs.outputs import figure_failure_note, library_versions, write_figures
from jaxlin.runs.rundir import (CHECKPOINT_DIR, METRICS_FILE, PARAMS_FILE, RECORDS_FILE, SET_ASIDE_DIR, SWEEP_OUTPUTS,
                                Layout, to_json)
from jaxlin.runs.session import Outcome, RunKind, Session, run
from jaxlin.runs.tensorboard import TENSORBOARD_DIR, Curve, member_name
from jaxlin.runs.session import resume_command as _resume_command
from jaxlin.runtime.devices import MODELS_AXIS, Placement, resolve_placement
from jaxlin.runtime.profiling import PROFILE_DIR, ProfileSteps
from jaxlin.runtime.signals import StopRequest
from jaxlin.training.evaluate import Evaluator
from jaxlin.training import precision
from jaxlin.training.schedule import eval_schedule
from jaxlin.training.state import SweepState
from jaxlin.training.sweep import (HOST_OVERHEAD_BYTES, MEMORY_FRACTION, Grid, SweepTrainer, best_member,
                                   describe_member, estimate_memory, gib, memory_limit)

SWEEP_FILE, SWEEP_FIGURE, BEST_DIR = SWEEP_OUTPUTS
SWEEP_RECORD_FIELDS = {"step": (int,), "validation_accuracy": (list,), "train_loss": (list,),
                       "elapsed_seconds": (float, int)}
SWEEP_LAYOUT = Layout((SWEEP_FILE, RECORDS_FILE, SWEEP_FIGURE, BEST_DIR, CHECKPOINT_DIR, SET_ASIDE_DIR,
                       TENSORBOARD_DIR, PROFILE_DIR), SWEEP_FILE, SWEEP_RECORD_FIELDS)
TABLE_ROWS = 24  # longer sweeps print their best rows only


def resume_command(out: Path) -> str:
    return _resume_command("sweep", out)


def check_resumable(saved: Config, saved_grid: Grid, wanted: Config, grid: Grid, explicit: set[str], step: int,
                    out: Path) -> tuple[Config, Grid]:
    """The checkpoint's config and grid with the given settings applied; refuses any that would not
    continue the same sweep."""
    wanted = saved.replace(**{name: getattr(wanted, name) for name in explicit | {"output_dir"}})
    conflicts = resume_conflicts(saved, wanted)
    for name, value in dataclasses.asdict(grid).items():
        if value is not None and value != getattr(saved_grid, name):
            conflicts.append(f"--{name.replace('_', '-')} {','.join(map(str, value))} (the checkpoint has "
                             f"{','.join(map(str, getattr(saved_grid, name) or ())) or 'the default'})")
    if conflicts:
        raise ConfigError(f"--resume: settings differ from the checkpoint in {out}: {'; '.join(conflicts)}")
    if wanted.num_steps < step:
        raise ConfigError(f"--resume: --num-steps {wanted.num_steps} is below the checkpoint's step {step}")
    return wanted, saved_grid


def _parse_sweep_record(record: dict, out: Path, step: int) -> tuple[Config, Grid]:
    try:
        return Config.from_dict(record["config"]), Grid.from_dict(record["grid"])
    except (KeyError, TypeError, ValueError) as err:
        raise DamagedCheckpoint(f"{out / CHECKPOINT_DIR / str(step)}: unreadable run record ({err})") from err


class SweepRun(RunKind):
    """`jaxlin sweep` over `grid`: the members are `grid.members(config)`."""

    command, noun, layout = "sweep", "sweep", SWEEP_LAYOUT

    def __init__(self, grid: Grid):
        self.grid = grid
        self.members: list[Config] = []

    def shared_settings(self) -> dict:
        return {"grid": self.grid.to_dict()}

    def check(self, config: Config) -> None:
        if config.loop != "fused":
            raise ConfigError(f"--loop {config.loop}: a sweep trains its members in the fused loop only")
        if config.validation_size == 0:
            raise ConfigError("--validation-size 0: a sweep chooses its best member on validation accuracy; hold "
                              "out at least one training example")

    def record_check(self, out: Path, config: Config | None = None, model: Model | None = None):
        def check(step: int, record: dict) -> None:
            _parse_sweep_record(record, out, step)

        return check

    def resumed_settings(self, record: dict, step: int, out: Path, config: Config, explicit: set[str]) -> Config:
        saved, saved_grid = _parse_sweep_record(record, out, step)
        config, self.grid = check_resumable(saved, saved_grid, config, self.grid, explicit, step, out)
        return config

    def plan(self, config: Config, data: Datasets, model: Model) -> tuple[Placement, str]:
        self.members = self.grid.members(config)
        optimizers.check_builds(config, model)  # a bad --optimizer: one line, before anything is written
        placement = resolve_placement(config.device, config.devices, axis=MODELS_AXIS)
        need = estimate_memory(config, model, len(self.members), placement.num_devices, data)
        limit, what = memory_limit(placement)
        text = _describe(config, self.grid, self.members, data, model, placement.describe(), need, limit, what)
        if what == "host memory":  # CPU devices (simulated ones too) share the host's memory
            need = need * placement.num_devices + HOST_OVERHEAD_BYTES
            where = f"on this host ({placement.num_devices} CPU device{'s' if placement.num_devices > 1 else ''})"
        else:
            where = "per device"
        if need > MEMORY_FRACTION * limit:
            raise ConfigError(f"a sweep of {len(self.members)} members needs about {gib(need)} {where}, more than "
                              f"{MEMORY_FRACTION:.0%} of the {gib(limit)} of {what}; sweep fewer members or "
                              f"spread them over more --devices")
        return placement, text

    def trainer(self, config: Config, data: Datasets, model: Model, placement: Placement) -> SweepTrainer:
        return SweepTrainer(config, self.members, data, model, placement)

    def evals(self, config: Config):
        return eval_schedule(config.num_steps, config.eval_every)

    def record_fields(self, config: Config, model: Model) -> dict:
        return {"config": config.to_dict(), "grid": self.grid.to_dict(), "model": model.spec}

    def tensorboard_curves(self, config: Config) -> list[Curve]:
        varied = varied_settings(self.grid)
        return [Curve(member_name(i, len(self.members), {name: getattr(member, name) for name in varied}),
                      "validation_accuracy", i, optimizers.learning_rate_schedule(member))
                for i, member in enumerate(self.members)]

    def finish(self, session: Session, trainer: SweepTrainer, state: SweepState, loop, evaluations: list[dict]):
        data, model = session.data, session.model
        summary = _finish(trainer, state, loop, evaluations, session, self.grid)
        best = summary["best"]
        best_params = trainer.member_params(state, best) if best is not None else None
        # The best member alone, on this process's own device: every process evaluates it (no collective).
        here = Placement((session.placement.local_device,))
        final = Evaluator(model.apply, data.test.images_uint8, data.test.labels, model.eval_batch_size, here)(
            best_params) if best is not None else None
        resolved = resolved_forms(trainer)
        members, notes = [member.replace(**resolved) for member in self.members], []

        def write(staging: Path) -> None:
            curves = np.array([[np.nan if a is None else a for a in r["validation_accuracy"]]
                               for r in summary["evaluations"]]).T
            try:
                from jaxlin.runs import plots  # matplotlib: only when figures are drawn

                plots.plot_sweep(summary["members"], [r["step"] for r in summary["evaluations"]], curves, best,
                                 staging / SWEEP_FIGURE)
            except Exception as err:  # a figure never fails a finished sweep
                (staging / SWEEP_FIGURE).unlink(missing_ok=True)
                notes.append(figure_failure_note("Sweep figure", err))
            if best is not None:
                notes.extend(_write_best(staging / BEST_DIR, summary, best, best_params, final, data, model,
                                         members[best]))
            (staging / SWEEP_FILE).write_text(to_json(summary, indent=2) + "\n")

        return Outcome(summary, write, before=[format_table(summary)], after=notes)


def _describe(config: Config, grid: Grid, members: list[Config], data: Datasets, model: Model, device: str,
              need: int, limit: int, what: str) -> str:
    varied = [f"{name.replace('_', ' ')} {_listed(values)}"
              for name, values in dataclasses.asdict(grid).items() if values is not None]
    shared = len({m.data_seed for m in members}) == 1
    order = (f"one batch order shared by all (data seed {members[0].data_seed})" if shared
             else "a batch order per data seed")
    lines = [f"Data: {data.describe()}",
             f"Sweep: {len(members)} member{'s' if len(members) != 1 else ''} of {model.describe()} "
             f"({'; '.join(varied) or 'one member'}); "
             f"optimizer {optimizers.describe(config, varied_settings(grid))}; batch {config.batch_size}; "
             f"{config.num_steps} steps; {order}{precision.describe(config)}",
             f"Device: {device}; memory: about {gib(need)} per device of {gib(limit)} ({what})",
             "Selection: the highest final validation accuracy; test accuracy is reported, never used to choose"]
    if not model.init_uses_key and grid.seeds and len(grid.seeds) > 1 and shared:
        lines.append("Note: the linear model starts from zeros, so members that differ only in their seed train "
                     "identically; --data-seeds gives them their own batch orders")
    return "\n".join(lines)


def varied_settings(grid: Grid) -> tuple[str, ...]:
    """The Config settings the grid gives each member its own value of."""
    return tuple(GRID_SETTINGS[name] for name, values in dataclasses.asdict(grid).items() if values is not None)


# Each grid axis as the setting its values become in a member.
GRID_SETTINGS = {"learning_rates": "learning_rate", "momentums": "momentum", "seeds": "seed",
                 "data_seeds": "data_seed", "weight_decays": "weight_decay", "clip_norms": "clip_norm"}


def _listed(values) -> str:
    """A grid axis for one line: every value, or the first and last few of a long one."""
    shown = [str(v) for v in values]
    if len(shown) > 8:
        return f"{', '.join(shown[:3])}, ..., {', '.join(shown[-2:])} ({len(shown)} values)"
    return ", ".join(shown)


def resolved_forms(trainer: SweepTrainer) -> dict:
    """The settings the trainer resolved from "auto" by fixed rules (what the records hold, never "auto")."""
    return {"chunk_form": trainer.config.chunk_form, "cpu_convolutions": trainer.config.cpu_convolutions}


def _finish(trainer: SweepTrainer, state: SweepState, loop, evaluations: list[dict], session: Session,
             grid: Grid) -> dict:
    """sweep.json: every member's hyperparameters, curve and final accuracies; the best by validation."""
    config, data, model = session.config.replace(**resolved_forms(trainer)), session.data, session.model
    frozen_at = trainer.frozen_at(state)
    diverged = [int(f) if f >= 0 else None for f in frozen_at]
    validation = evaluations[-1]["validation_accuracy"]
    best = best_member(validation, diverged)  # chosen before the test set is looked at
    tick = time.perf_counter()
    test = (trainer.test(state.params) / len(data.test)).tolist() if trainer.test else [None] * len(validation)
    loop.eval_seconds += time.perf_counter() - tick
    members = []
    for i, member in enumerate(trainer.members[:trainer.num_members]):
        members.append({"index": i, **describe_member(member, trainer.hyperparameters),
                        "diverged_at_step": diverged[i],
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
        "selection": f"highest final validation accuracy ({len(data.validation):,} images held out of training) "
                     f"among members that did not diverge; lowest index on ties",
        "data": data.summary(),
        "shared_batch_order": trainer.shared_order,
        "members": members,
        "evaluations": evaluations,
        "num_steps": state.step,
        "timings": {"data_load_seconds": session.data_seconds, "compile_seconds": trainer.compile_seconds,
                    "train_seconds": train_seconds, "eval_seconds": loop.eval_seconds,
                    "steps_per_second": loop.steps_trained / train_seconds if train_seconds > 0 else None,
                    "model_steps_per_second": num_members * loop.steps_trained / train_seconds
                    if train_seconds > 0 else None,
                    "total_seconds": time.perf_counter() - session.started},
        "device": session.placement.describe(),
        "versions": library_versions(),
        "model": model.describe(),
        "optimizer": optimizers.describe(config, varied_settings(grid)),
        "grid": grid.to_dict(),
        "config": {k: v for k, v in config.used_settings().items()
                   if k not in ("seed", "data_seed", "dot_layout", *trainer.hyperparameters)},
        **({"profile": loop.trace.record()} if loop.trace is not None and loop.trace.record() else {}),
    }


def _write_best(directory: Path, summary: dict, best: int, params, final: dict, data: Datasets, model: Model,
                member: Config) -> list[str]:
    """The best member's own run directory (figures, params, metrics); returns the figures' notes."""
    directory.mkdir()
    evaluations = [{"step": r["step"], "validation_accuracy": r["validation_accuracy"][best],
                    "train_loss": r["train_loss"][best], "elapsed_seconds": r["elapsed_seconds"]}
                   for r in summary["evaluations"]]
    notes = write_figures(directory, data, model, params, final, evaluations, curve_key="validation_accuracy")
    params_file.save_params(directory / PARAMS_FILE, params, model, data.image_shape)
    metrics = {"member": best, "final_test_accuracy": final["accuracy"],
               "final_validation_accuracy": summary["best_validation_accuracy"],
               "final_test_per_class_accuracy": final["per_class_accuracy"],
               "final_test_confusion_matrix": final["confusion_matrix"], "num_steps": summary["num_steps"],
               "evaluations": evaluations, "model": model.describe(), "optimizer": optimizers.describe(member),
               "config": {k: v for k, v in member.used_settings().items() if k != "dot_layout"},
               "versions": summary["versions"]}
    (directory / METRICS_FILE).write_text(to_json(metrics, indent=2) + "\n")
    return notes


def _percent(value) -> str:
    return "-" if value is None else f"{value:.2%}"


def format_table(summary: dict) -> str:
    """The members (the best rows of a long sweep), best marked, and the sweep's result."""
    members = summary["members"]
    numbers = [(key, title) for key, title in (("momentum", "momentum"), ("weight_decay", "weight decay"),
                                               ("clip_norm", "clip norm")) if members and key in members[0]]
    several_seeds = len({m["seed"] for m in members}) > 1
    several_data_seeds = len({m["data_seed"] for m in members}) > 1
    header = ["", "member", "learning rate"] + [title for _, title in numbers] + \
        (["seed"] if several_seeds else []) + (["data seed"] if several_data_seeds else []) + \
        ["val acc", "test acc", "diverged"]
    rows = members
    if len(members) > TABLE_ROWS:
        rows = sorted(members, key=lambda m: (m["diverged_at_step"] is not None,
                                              -(m["validation_accuracy"] or 0), m["index"]))[:TABLE_ROWS]
    body = []
    for m in rows:
        row = ["*" if m["index"] == summary["best"] else "", str(m["index"]), f"{m['learning_rate']:g}"]
        row += [f"{m[key]:g}" if m[key] else "-" for key, _ in numbers]
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


def run_sweep(config: Config, grid: Grid, progress: bool = True, dry_run: bool = False, log=print,
              mode: str = "new", explicit: set[str] | None = None, stop: StopRequest | None = None,
              data: Datasets | None = None, tensorboard: bool = False,
              profile: ProfileSteps | None = None) -> dict | None:
    """The `jaxlin sweep` job; returns what sweep.json holds (None for a dry run or nothing to do).

    mode, `explicit`, `tensorboard` (one TensorBoard run per member) and `profile` as in
    `train_run.train_and_evaluate`; raises `Stopped` after SIGINT/SIGTERM."""
    return run(SweepRun(grid), config, mode, explicit, stop, progress, dry_run, data, log, tensorboard=tensorboard,
               profile=profile)
