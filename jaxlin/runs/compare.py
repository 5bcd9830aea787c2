"""`jaxlin compare`: runs side by side, as one figure of their learning curves and one table.

A run is a `jaxlin train` output directory, finished (`metrics.json`, whose evaluations, timings and
config are the run's own account) or not (stopped, or still going: its `metrics.jsonl` records, and the
config of its newest checkpoint that verifies), or a sweep's `best/` directory (validation accuracy, not
test accuracy; its evaluations are in its `metrics.json`). Everything is read, never written or locked:
a run that is going on is looked at as it stands.

Wall time is the run's own account: `total_seconds` of a finished `jaxlin train` run (the whole
process, imports and data loading included), else the `elapsed_seconds` of its last record (the time
since its training loop started, compiling included, over all its sessions: so also for a resumed
run, whose `total_seconds` counts its last session only). The curves against wall time use the
records' `elapsed_seconds`. Steps per second of a finished train run are its training rate
(`timings.steps_per_second`: training time only); for the others (unfinished runs, a sweep's best member)
they are the rate between the first and the last record, evaluations included, marked "~" in the table.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

from jaxlin.errors import JaxlinError
from jaxlin.runs.rundir import METRICS_FILE, RECORD_FIELDS, RECORDS_FILE, SWEEP_OUTPUTS, _parse_record, has_checkpoints

SWEEP_FILE, SWEEP_FIGURE, BEST_DIR = SWEEP_OUTPUTS
TEST, VALIDATION = "test_accuracy", "validation_accuracy"
# A sweep's best member records validation accuracy where a train run records test accuracy; the other
# fields and their types are the same.
VALIDATION_FIELDS = {(VALIDATION if name == TEST else name): types for name, types in RECORD_FIELDS.items()}
# Settings that differ between any two runs without telling anything about them.
NOT_COMPARED = frozenset({"output_dir"})
UNUSED = "-"  # a setting that a run does not use (e.g. hidden_sizes of a linear model), or did not record


class CompareError(JaxlinError):
    """A path that is not a run `compare` can read: one line, exit 2."""


@dataclasses.dataclass
class Run:
    """What `compare` knows of one run directory."""

    path: Path
    records: list[dict]  # its evaluations, in step order
    accuracy_key: str  # TEST or VALIDATION
    finished: bool
    metrics: dict | None  # metrics.json, when there is one
    settings: dict | None  # the config it used (config.used_settings); None when it cannot be read
    label: str = ""

    @property
    def accuracy_kind(self) -> str:
        return self.accuracy_key.split("_")[0]

    @property
    def final_accuracy(self) -> float | None:
        if self.metrics is not None and f"final_{self.accuracy_key}" in self.metrics:
            return self.metrics[f"final_{self.accuracy_key}"]
        return self.records[-1][self.accuracy_key]

    @property
    def final_train_loss(self) -> float | None:
        losses = [r["train_loss"] for r in self.records if r["train_loss"] is not None]
        return losses[-1] if losses else None

    @property
    def steps(self) -> int:
        if self.metrics is not None and isinstance(self.metrics.get("num_steps"), int):
            return self.metrics["num_steps"]
        return self.records[-1]["step"]

    @property
    def _timings(self) -> dict:
        timings = (self.metrics or {}).get("timings")
        return timings if isinstance(timings, dict) else {}

    @property
    def wall_time(self) -> tuple[float | None, str]:
        """(seconds, where they come from)."""
        total = self._timings.get("total_seconds")
        if isinstance(total, (int, float)) and (self.metrics or {}).get("resumed_from_step") is None:
            return total, "metrics.json total_seconds"
        return self.records[-1]["elapsed_seconds"], "last record's elapsed_seconds"

    @property
    def profile(self) -> dict | None:
        """The trace a finished run recorded (`--profile`), if any."""
        found = (self.metrics or {}).get("profile")
        return found if isinstance(found, dict) else None

    @property
    def steps_per_second(self) -> tuple[float | None, str]:
        """(steps per second, how they were measured): see the module's docstring."""
        rate = self._timings.get("steps_per_second")
        if isinstance(rate, (int, float)):
            return rate, "training"
        first, last = self.records[0], self.records[-1]
        seconds = last["elapsed_seconds"] - first["elapsed_seconds"]
        if last["step"] > first["step"] and seconds > 0:
            return (last["step"] - first["step"]) / seconds, "between records"
        return None, "between records"


# Reading ------------------------------------------------------------------------------------------------


def check_paths(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """The run directories as given, refused (CompareError) when one is missing, not a directory, or
    given twice; cheap, so the command line checks them before JAX is imported."""
    seen: dict[Path, str] = {}
    directories = []
    for given in paths:
        path = Path(given)
        if not path.exists():
            raise CompareError(f"{given}: no such run directory")
        if not path.is_dir():
            raise CompareError(f"{given} is a file, not a run directory (give the directory `jaxlin train` wrote)")
        key = path.resolve()
        if key in seen:
            same = f" (the same directory as {seen[key]})" if seen[key] != str(given) else ""
            raise CompareError(f"{given} is given twice{same}; give each run once")
        seen[key] = str(given)
        directories.append(path)
    return directories


def _is_sweep_dir(path: Path) -> bool:
    return (path / SWEEP_FILE).exists() or (path / SWEEP_FIGURE).exists()


def _refuse_sweep(path: Path, finished: bool) -> CompareError:
    if finished:
        return CompareError(f"{path} is a sweep's directory, not a run: compare its best member, {path / BEST_DIR} "
                            f"(its members' curves are in {path / SWEEP_FIGURE})")
    return CompareError(f"{path} holds a sweep that has not finished: once it has, compare its best member, "
                        f"{path / BEST_DIR} (its members' curves are then in {path / SWEEP_FIGURE})")


def _read_metrics(path: Path) -> dict | None:
    file = path / METRICS_FILE
    if not file.is_file():
        return None
    try:
        metrics = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CompareError(f"{file} cannot be read as JSON ({_short(err)})") from None
    if not isinstance(metrics, dict):
        raise CompareError(f"{file} is not a jaxlin metrics file (not a JSON object)")
    return metrics


def _short(err: BaseException) -> str:
    return getattr(err, "strerror", None) or str(err).splitlines()[0]


def _record_kind(first_line: str) -> str | None:
    """TEST or VALIDATION for the first record of a run's metrics.jsonl; "sweep" for a sweep's (one value
    per member); None for anything else."""
    try:
        record = json.loads(first_line)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    for key in (TEST, VALIDATION):
        if key in record:
            return "sweep" if isinstance(record[key], list) else key
    return None


def _parse_lines(file: Path, lines: list[str], complete_last: bool) -> tuple[list[dict], str]:
    """The records of a metrics.jsonl, checked as the run directory checks them (`rundir._parse_record`):
    any line that is not one is a CompareError naming it, but for a last line still being written."""
    key = _record_kind(lines[0])
    if key == "sweep":
        raise _refuse_sweep(file.parent, finished=False)
    if key is None:
        if len(lines) == 1 and not complete_last:
            raise CompareError(f"{file} holds no complete record yet (the run has not evaluated yet)")
        raise CompareError(f"{file}: line 1 is not a jaxlin evaluation record")
    fields = RECORD_FIELDS if key == TEST else VALIDATION_FIELDS
    records = []
    for number, line in enumerate(lines, 1):
        record = _parse_record(line, fields)
        if record is None:
            if number == len(lines) and not complete_last and records:  # being appended as we read
                break
            raise CompareError(f"{file}: line {number} is not a jaxlin evaluation record")
        if records and record["step"] <= records[-1]["step"]:
            raise CompareError(f"{file}: line {number} goes back to step {record['step']} after step "
                               f"{records[-1]['step']}")
        records.append(record)
    return records, key


def _read_records(path: Path, metrics: dict | None) -> tuple[list[dict], str]:
    """(records, accuracy key) from metrics.jsonl, else (a sweep's best/) from metrics.json's evaluations."""
    file = path / RECORDS_FILE
    if file.is_file():
        try:
            text = file.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise CompareError(f"{file} cannot be read ({_short(err)})") from None
        lines = text.splitlines()
        if not any(line.strip() for line in lines):
            raise CompareError(f"{file} is empty: the run has not evaluated yet")
        return _parse_lines(file, lines, complete_last=text.endswith("\n"))
    evaluations = metrics.get("evaluations") if metrics is not None else None
    if not isinstance(evaluations, list) or not evaluations:
        raise CompareError(f"{path / METRICS_FILE} holds no evaluations (and there is no {RECORDS_FILE})")
    lines = [json.dumps(e, allow_nan=False) if isinstance(e, dict) else "" for e in evaluations]
    try:
        return _parse_lines(path / METRICS_FILE, lines, complete_last=True)
    except CompareError as err:  # its "line N" is the Nth evaluation
        raise CompareError(str(err).replace(": line ", ": evaluation ", 1)) from None


def _checkpoint_settings(path: Path) -> dict | None:
    """The settings of an unfinished run, from its newest checkpoint whose record verifies (read only,
    as `session.latest_record` looks at a run another process may hold); None when none can be read."""
    if not has_checkpoints(path):
        return None
    from jaxlin.config import Config
    from jaxlin.runs.checkpoints import CheckpointStore

    try:
        store = CheckpointStore(path, read_only=True)
    except Exception:  # orbax cannot open it: the settings are unknown, the curves still shown
        return None
    try:
        for step in store.steps():
            try:
                record = store.read_record(step)
                if record.get("kind") == "sweep" or "grid" in record:
                    raise _refuse_sweep(path, finished=False)
                return Config.from_dict(record["config"]).used_settings()
            except CompareError:
                raise
            except Exception:  # damaged, or of a jaxlin whose config this one cannot read: try an older one
                continue
        return None
    finally:
        try:
            store.close()
        except Exception:
            pass


def read_run(path: Path) -> Run:
    """One run directory, or a CompareError saying why it is not one."""
    if _is_sweep_dir(path):
        raise _refuse_sweep(path, finished=(path / SWEEP_FILE).exists())
    if not (path / RECORDS_FILE).exists() and not (path / METRICS_FILE).exists():
        raise CompareError(f"{path} is not a jaxlin run directory (it holds neither {RECORDS_FILE} nor "
                           f"{METRICS_FILE})")
    metrics = _read_metrics(path)
    records, key = _read_records(path, metrics)
    if metrics is not None:
        config = metrics.get("config")
        settings = dict(config) if isinstance(config, dict) else None
    else:
        settings = _checkpoint_settings(path)
    return Run(path, records, key, metrics is not None, metrics, settings)


def _parts(path: Path) -> list[str]:
    """The names along the path as given, made absolute (a symlink keeps the name it was given by)."""
    return list(Path(os.path.abspath(path)).parts[1:]) or ["/"]


def _own_name(path: Path) -> list[str]:
    """The trailing path parts that name a run: its directory's name, and the sweep's for a sweep's best/."""
    parts = _parts(path)
    depth = 2 if parts[-1] == BEST_DIR and len(parts) > 1 and _is_sweep_dir(path / "..") else 1
    return parts[-depth:]


def unique_labels(paths: Sequence[Path]) -> list[str]:
    """Short labels, one per (distinct) path: the directory's name, with as many of its parents as it takes
    to tell apart runs of the same name (`a/run`, `b/run`)."""
    full = [_parts(p) for p in paths]
    depths = [len(_own_name(p)) for p in paths]
    while True:
        labels = ["/".join(parts[-depth:]) for parts, depth in zip(full, depths)]
        clashing = [i for i, label in enumerate(labels) if labels.count(label) > 1 and depths[i] < len(full[i])]
        if not clashing:
            return labels
        for i in clashing:
            depths[i] += 1


def read_runs(paths: Sequence[str | os.PathLike]) -> list[Run]:
    directories = check_paths(paths)
    runs = [read_run(path) for path in directories]
    for run, label in zip(runs, unique_labels(directories)):
        run.label = label
    return runs


# The table ----------------------------------------------------------------------------------------------


def differing_settings(runs: Sequence[Run]) -> list[str]:
    """The settings whose values are not the same in every run whose settings are known (a setting one run
    uses and another does not differs), in the order the runs list them."""
    known = [run.settings for run in runs if run.settings is not None]
    names = list(dict.fromkeys(name for settings in known for name in settings if name not in NOT_COMPARED))
    return [name for name in names if len({json.dumps(s.get(name, UNUSED), sort_keys=True) for s in known}) > 1]


def table(runs: Sequence[Run], figure: str | None = None) -> dict:
    """The comparison as a JSON-able dict (what --json prints)."""
    differing = differing_settings(runs)
    rows = []
    for run in runs:
        wall, wall_source = run.wall_time
        rate, rate_source = run.steps_per_second
        row = {"label": run.label, "path": str(run.path), "finished": run.finished,
               "accuracy_kind": run.accuracy_kind, "final_accuracy": run.final_accuracy}
        if run.accuracy_key == VALIDATION and run.metrics is not None and "final_test_accuracy" in run.metrics:
            row["final_test_accuracy"] = run.metrics["final_test_accuracy"]
        row.update({"final_train_loss": run.final_train_loss, "steps": run.steps,
                    "wall_seconds": wall, "wall_seconds_from": wall_source,
                    "steps_per_second": rate, "steps_per_second_from": rate_source, "profiled": run.profile,
                    "settings": None if run.settings is None else {name: run.settings.get(name) for name in differing}})
        rows.append(row)
    return {"runs": rows, "differing_settings": differing,
            "settings_unknown": [run.label for run in runs if run.settings is None], "figure": figure}


def _setting_text(value) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(_setting_text(v) for v in value)
    if value is None:
        return "none"
    return str(value)


def _number(value, form: str) -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, form)


def format_table(runs: Sequence[Run], summary: dict) -> str:
    """The table `compare` prints: a row per run, the settings that differ as columns, then notes."""
    differing = summary["differing_settings"]
    header = ["run", "accuracy", "train loss", "steps", "wall time", "steps/s", *differing]
    rows = [header]
    for run, row in zip(runs, summary["runs"]):
        accuracy = "-" if row["final_accuracy"] is None else f"{row['final_accuracy']:.2%} ({run.accuracy_kind})"
        wall = _number(row["wall_seconds"], ".1f") + (" s" if row["wall_seconds"] is not None else "")
        rate = _number(row["steps_per_second"], ".0f")
        if row["steps_per_second"] is not None and row["steps_per_second_from"] != "training":
            rate = "~" + rate
        if run.settings is None:
            settings = ["unknown"] * len(differing)
        else:
            settings = [_setting_text(run.settings[name]) if name in run.settings else UNUSED for name in differing]
        rows.append([run.label, accuracy, _number(row["final_train_loss"], ".4f"), str(row["steps"]), wall, rate,
                     *settings])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) if i == 0 or i >= 6 else cell.rjust(width)
                       for i, (cell, width) in enumerate(zip(r, widths))).rstrip() for r in rows]
    lines.extend(_notes(runs, summary))
    return "\n".join(lines)


def _notes(runs: Sequence[Run], summary: dict) -> list[str]:
    notes = []
    known = [run for run in runs if run.settings is not None]
    if len(runs) == 1:
        notes.append("(one run: no settings to compare)")
    elif len(known) < 2:
        notes.append("(settings cannot be compared: fewer than two runs have settings that can be read)")
    elif not summary["differing_settings"]:
        notes.append("(all settings equal)")
    else:
        unused = any(run.settings is not None and name not in run.settings
                     for run in runs for name in summary["differing_settings"])
        unused_note = f"; {UNUSED}: not used by that run, or not recorded" if unused else ""
        notes.append(f"(all other settings equal{unused_note})")
    for run in runs:
        if run.settings is None:
            notes.append(f"{run.label}: settings unknown (no metrics.json, and no checkpoint whose record can be read)")
        if not run.finished:
            notes.append(f"{run.label}: not finished (its curves and numbers stop at its last record, step "
                         f"{run.records[-1]['step']})")
    for run in runs:
        if run.profile is not None:
            notes.append(f"{run.label}: profiled (--profile, steps {run.profile.get('first_step')} to "
                         f"{run.profile.get('last_step')}): its traced steps ran slower under the trace and count in "
                         f"its steps/s; the trace's own writing does not")
    if len({row["wall_seconds_from"] for row in summary["runs"]}) > 1:
        notes.append("wall time: the whole process (metrics.json's total_seconds) for a finished train run, the time "
                     "since training started (the last record's elapsed_seconds) for the others")
    if any(row["steps_per_second"] is not None and row["steps_per_second_from"] != "training"
           for row in summary["runs"]):
        notes.append("~ steps/s between the first and the last record, evaluations included (not training alone)")
    return notes


# The figure ---------------------------------------------------------------------------------------------

_MARKER_POINTS = 25  # curves of at most this many records are drawn with markers
_MARKERS = ("o", "s", "^", "D", "v", "x")


def plot_runs(runs: Sequence[Run], path: str | os.PathLike):
    """2x2 panels: train loss and accuracy against step (top) and against wall time (bottom), a colour per
    run; validation-accuracy curves (a sweep's best member) dashed. Written atomically to `path`."""
    import numpy as np
    from matplotlib.figure import Figure

    from jaxlin.runs.plots import _curve_limits, _save

    fig = Figure(figsize=(11, 8.4))
    axes = fig.subplots(2, 2)
    kinds = sorted({run.accuracy_kind for run in runs}, key=lambda kind: kind != "test")
    longest = max(len(run.records) for run in runs)
    accuracy_rows = np.full((len(runs), longest), np.nan)
    losses = []
    from matplotlib import colormaps

    # Matplotlib's ten colours, as every figure of jaxlin's; past ten runs the twenty of tab20, and past
    # twenty the line's marker tells apart runs of one colour.
    palette = [f"C{i}" for i in range(10)] if len(runs) <= 10 else list(colormaps["tab20"].colors)
    for number, run in enumerate(runs):
        colour = palette[number % len(palette)]
        steps = [r["step"] for r in run.records]
        seconds = [r["elapsed_seconds"] for r in run.records]
        loss = [np.nan if r["train_loss"] is None else r["train_loss"] for r in run.records]
        accuracy = [np.nan if r[run.accuracy_key] is None else 100 * r[run.accuracy_key] for r in run.records]
        accuracy_rows[number, :len(accuracy)] = np.asarray(accuracy) / 100
        losses.extend(v for v in loss if np.isfinite(v))
        style = {"color": colour, "linestyle": "--" if run.accuracy_key == VALIDATION else "-", "linewidth": 1.6,
                 "marker": _MARKERS[number // len(palette) % len(_MARKERS)] if len(runs) > len(palette) else
                 "o" if len(run.records) <= _MARKER_POINTS else None, "markersize": 3, "markevery": 0.1}
        label = run.label + (" (validation accuracy)" if len(kinds) > 1 and run.accuracy_key == VALIDATION else "")
        axes[0, 0].plot(steps, loss, **{**style, "linestyle": "-"}, label=label)
        axes[0, 1].plot(steps, accuracy, **style)
        axes[1, 0].plot(seconds, loss, **{**style, "linestyle": "-"})
        axes[1, 1].plot(seconds, accuracy, **style)
    accuracy_name = " / ".join(kinds).capitalize() + " accuracy (%)"
    for row, x_label in ((0, "Training step"), (1, "Seconds since training started (compiling included)")):
        loss_ax, accuracy_ax = axes[row]
        loss_ax.set_ylabel("Train loss")
        if losses and min(losses) > 0 and max(losses) / min(losses) > 10:
            loss_ax.set_yscale("log")
        accuracy_ax.set_ylabel(accuracy_name)
        accuracy_ax.set_ylim(*_curve_limits(accuracy_rows))
        for ax in (loss_ax, accuracy_ax):
            ax.set_xlabel(x_label)
            ax.set_xlim(left=0)  # against time: how long each took to start (compiling) shows too
            ax.grid(alpha=0.3)
    axes[0, 0].set_title("Train loss by step")
    axes[0, 1].set_title(f"{accuracy_name[:-4]} by step")
    axes[1, 0].set_title("Train loss by wall time")
    axes[1, 1].set_title(f"{accuracy_name[:-4]} by wall time")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    columns = len(labels) if sum(len(label) + 6 for label in labels) <= 110 else min(len(labels), 3)
    fig.legend(handles, labels, loc="upper center", ncol=columns, frameon=False, fontsize=10,
               bbox_to_anchor=(0.5, 1.0))
    legend_rows = math.ceil(len(labels) / columns)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.035 * legend_rows))
    return _save(fig, path)


def check_output(path: str | os.PathLike) -> Path:
    """Where the figure goes: `path`, or the file a symlink there points to. Refused (CompareError) when it
    is a directory, anything but a regular file (a device such as /dev/null, a pipe: the figure is
    written to a new file renamed into place, which would replace it), or its directory is missing."""
    if str(path) == "-":
        raise CompareError("--output -: the figure is a PNG file; give its path (--json writes the table to "
                           "stdout, --no-figure draws none)")
    out = Path(os.path.realpath(path)) if Path(path).is_symlink() else Path(path)
    if out.is_dir():
        raise CompareError(f"--output {path} is a directory; give the PNG file's path (e.g. {out / 'compare.png'})")
    if out.exists() and not out.is_file():
        raise CompareError(f"--output {path} is not a regular file; give the path of a PNG file to write "
                           f"(--no-figure draws none)")
    parent = out.parent
    if not parent.is_dir():
        raise CompareError(f"--output {path}: its directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise CompareError(f"--output {path}: cannot write in {parent}")
    return out
