"""Runs the benchmark: throughput cases, the fused-loop sweep, vmap scaling, time to accuracy, end to end and
`jaxlin train`'s steady state per step.

Contenders run in their own worker processes and are interleaved repeat by repeat, so
drift of the machine hits all of them alike; the whole-process rows interleave their commands round by round.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.util
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import TARGET_ACCURACY, not_run_reason, runs_model, shared_order
from bench.report import one_line
from bench.worker import CONTENDERS
from jaxlin.runtime.profiling import ProfileSteps

ROOT = Path(__file__).resolve().parents[1]


def recorded_data_dir(data_dir) -> str:
    """The data directory as the results record it: relative to the repository's root (unambiguous
    whatever the working directory, and no machine's absolute path in committed results)."""
    return os.path.relpath(Path(data_dir).resolve(), ROOT)
MAIN_CONTENDERS = ["tf_reference", "tf2_function", "tf2_xla", "torch_eager", "jaxlin_per_step",
                   "jaxlin_fused", "numpy_floor"]
TTA_CONTENDERS = ["tf_reference", "tf2_function", "tf2_xla", "torch_eager", "jaxlin_per_step", "jaxlin_fused"]


@dataclasses.dataclass
class Plan:
    repeats: int
    cases: list[tuple[str, int, int]]              # (model, batch_size, num_steps)
    sweep: list[tuple[int, int]]                   # fused (steps_per_call, unroll) at linear, batch 100
    sweep_steps: int
    num_models: list[int]                          # vmap
    device_counts: list[int]                       # data parallel (simulated CPU devices on a CPU)
    vmap_steps: int
    tta_repeats: int
    tta_eval_every: int
    tta_max_steps: int
    tta_target: float
    peak: bool = True  # measure the machine's large-matmul rate
    e2e_repeats: int = 5  # whole-process runs of the tutorial per command (0: none)
    e2e_warm_up: bool = True  # one untimed round first (it also fills the warm cache)
    optimizer: str | None = None  # the JAX contenders' optimizer (None: the tutorial's SGD, as every contender)
    learning_rate: float | None = None  # its learning rate (None: bench.common.learning_rate of the model)
    # `jaxlin train` steady state: per model, its run lengths in steps, the shortest first (subtracted from
    # each longer one, so start-up cancels); whole processes, defaults against the bare loop
    steady_lengths: list[tuple[str, tuple[int, ...]]] = dataclasses.field(default_factory=list)
    steady_repeats: int = 3  # interleaved timed rounds of every steady-state command (0: none)
    steady_warm_up: bool = True  # one untimed round first (it fills the compilation cache)

    @property
    def own_optimizer(self) -> bool:
        """Whether the JAX contenders train with another optimizer than the others' SGD (who then sit out)."""
        return self.optimizer is not None or self.learning_rate is not None

    def worker_options(self) -> list[str]:
        """The worker's command-line options that choose its optimizer (a JAX contender's only)."""
        options = ["--optimizer", self.optimizer] if self.optimizer else []
        return options + (["--learning-rate", repr(self.learning_rate)] if self.learning_rate else [])


# The CNN's steady-state lengths: `jaxlin train --model cnn` trains at tens of ms per step on a 2-core CPU, and
# its whole-process start-up (compiling, evaluating 10,000 test images) varies by seconds on a busy machine, so
# the long run adds 300 steps (about 10 s); 50 more steps measured below that noise (a negative difference).
FULL = Plan(repeats=5,
            cases=[("linear", 100, 1000), ("linear", 1000, 200), ("linear", 10000, 20),
                   ("mlp", 100, 500), ("mlp", 1000, 100), ("mlp", 10000, 10), ("cnn", 100, 20)],
            sweep=[(k, u) for k in (100, 1000) for u in (1, 2, 4, 8)], sweep_steps=1000,
            num_models=[1, 8, 64, 256], vmap_steps=1000, device_counts=[1, 2, 4],
            tta_repeats=3, tta_eval_every=50, tta_max_steps=5000, tta_target=TARGET_ACCURACY,
            steady_lengths=[("linear", (1000, 21000, 100000)), ("mlp", (1000, 21000)), ("cnn", (10, 310))])
QUICK = Plan(repeats=2, cases=[("linear", 100, 20), ("mlp", 100, 10), ("cnn", 100, 2)],
             sweep=[(10, 1), (10, 2)], sweep_steps=20, num_models=[1, 4], vmap_steps=20, device_counts=[1, 2],
             tta_repeats=1, tta_eval_every=20, tta_max_steps=100, tta_target=0.5, e2e_repeats=1,
             e2e_warm_up=False, steady_lengths=[("linear", (20, 200, 400)), ("mlp", (20, 100)), ("cnn", (2, 6))],
             steady_repeats=1,
             steady_warm_up=False)
# `python -m bench --only train_steady_state`: the steady-state rows, and beside them the throughput of the
# TF reference, PyTorch eager (the CNN's peer: the TF reference builds dense models only) and the fused loop at
# the same models (batch 100), which their ratios are taken to.
STEADY_CONTENDERS = ["tf_reference", "torch_eager", "jaxlin_fused"]
# The throughput rows the steady-state rows are compared to (TF2's: when the run timed them).
STEADY_PEERS = ("tf_reference", "torch_eager", "tf2_function", "tf2_xla", "jaxlin_fused")


class Worker:
    """One contender's process, spoken to in JSON lines. It runs in the caller's working directory, so
    that a user's model named MODULE:NAME imports from there as it does for `jaxlin train`."""

    def __init__(self, name: str, data_dir: str, env: dict, options: list[str] = ()):
        self.name = name
        # Frameworks log plenty to stderr; keep it out of the table, but at hand for failures.
        self.log = tempfile.TemporaryFile(mode="w+")
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.worker", name, "--data-dir", str(Path(data_dir).resolve()), *options],
            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, bufsize=1)
        self.hello = self._read()

    def _read(self) -> dict:
        for line in self.process.stdout:
            line = line.strip()
            if line.startswith("{"):
                return json.loads(line)
        self.log.seek(0)
        tail = self.log.read()[-2000:]
        raise RuntimeError(f"worker {self.name} exited with status {self.process.wait()}:\n{tail}")

    def ask(self, op: str, **kwargs) -> dict:
        self.process.stdin.write(json.dumps({"op": op, **kwargs}) + "\n")
        self.process.stdin.flush()
        reply = self._read()
        if "error" in reply:
            raise RuntimeError(f"{self.name} {op}: {reply['error']}")
        return reply

    def close(self) -> dict:
        try:
            reply = self.ask("exit")
        finally:
            self.process.stdin.close()
            self.process.wait(timeout=60)
            self.log.close()
        return reply


SIMULATED_CPU_DEVICES = 4


def worker_env(name: str, native_blas: bool) -> dict:
    # The directory this `bench` package was imported from (the repository, or site-packages once installed)
    # goes first, so that the worker runs the same bench whatever the working directory holds.
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    # The workers time compiling too (`compile_seconds`): jaxlin's persistent compilation cache, on by default
    # for library use, would hide it.
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": path, "JAXLIN_COMPILE_CACHE": "0"}
    if name == "jaxlin_data_parallel":
        # On a CPU, simulated devices (a GPU machine's devices are its own; the flag only touches CPUs).
        env.setdefault("JAX_NUM_CPU_DEVICES", str(SIMULATED_CPU_DEVICES))
    if name == "numpy_floor" and native_blas:
        # This machine pins OpenBLAS to an older kernel (a safety setting); the floor
        # should be what the hardware does, so its process alone uses the native one.
        env.pop("OPENBLAS_CORETYPE", None)
        env.pop("OPENBLAS_L2_SIZE", None)
    return env


def available(name: str) -> bool:
    return importlib.util.find_spec(CONTENDERS[name][2]) is not None


def skip_reason(name: str, plan: Plan) -> str | None:
    """Why a contender does not run at all (None: it runs): its framework is missing, it cannot train the
    optimizer asked for, or the plan holds nothing for it (no worker is started for nothing)."""
    if name in ("jaxlin_vmap", "jaxlin_sweep") and not plan.num_models:
        return "no many-models runs in this plan (--no-vmap)"
    if name == "jaxlin_data_parallel" and not plan.device_counts:
        return "no data-parallel runs in this plan (--no-parallel)"
    if not available(name):
        return f"{CONTENDERS[name][2]} is not installed"
    if plan.own_optimizer and not name.startswith("jaxlin"):
        return "it trains only with the tutorial's SGD; --optimizer and --learning-rate time the jaxlin contenders"
    return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def summarize(seconds: list[float], num_steps: int, batch_size: int, num_models: int = 1) -> dict:
    median = statistics.median(seconds)
    return {
        "repeats_seconds": seconds,
        "median_us_per_step": 1e6 * median / num_steps,
        "min_us_per_step": 1e6 * min(seconds) / num_steps,
        "max_us_per_step": 1e6 * max(seconds) / num_steps,
        "steps_per_second": num_steps / median,
        "examples_per_second": num_steps * batch_size / median,
        "model_steps_per_second": num_models * num_steps / median,
    }


def interleaved(workers: dict, setups: list[tuple[str, str, dict]], repeats: int, log) -> list[dict]:
    """Sets up each (worker, variant, args), then runs them round-robin `repeats` times. A row whose set-up
    or run fails is recorded as failed with its reason, logged in one line, and the others go on."""
    rows = []
    for name, variant, args in setups:
        row = {"contender": name, "variant": variant, **args}
        try:
            row.update(workers[name].ask("setup", variant=variant, **args))
            row["seconds"] = []
        except RuntimeError as err:
            row.update(status="failed", reason=str(err))
            log(f"  {name:<16} {variant:<22} failed: {one_line(err)}")
        rows.append(row)
    live = [r for r in rows if "seconds" in r]
    for repeat in range(repeats):
        order = live[repeat % len(live):] + live[:repeat % len(live)] if live else []
        for row in order:
            try:
                reply = workers[row["contender"]].ask("run", variant=row["variant"])
            except RuntimeError as err:  # recorded; the other rows go on
                row.update(status="failed", reason=str(err))
                row.pop("seconds")
                live.remove(row)
                log(f"  {row['contender']:<16} {row['variant']:<22} failed: {one_line(err)}")
                continue
            row["seconds"].append(reply["seconds"])
            row["loss"] = reply["loss"]
    for row in live:
        workers[row["contender"]].ask("drop", variant=row["variant"])
        row.update(status="ok", **summarize(row.pop("seconds"), row["num_steps"], row["batch_size"],
                                              row.get("num_models", 1)))
        log(f"  {row['contender']:<16} {row['variant']:<22} {row['median_us_per_step']:10.1f} us/step")
    return rows


def throughput(workers: dict, plan: Plan, log) -> list[dict]:
    rows = []
    for model, batch_size, num_steps in plan.cases:
        log(f"throughput: {model}, batch {batch_size}, {num_steps} steps x {plan.repeats} repeats")
        args = {"model": model, "batch_size": batch_size, "num_steps": num_steps}
        setups = [(name, f"{model}-b{batch_size}", args) for name in MAIN_CONTENDERS
                  if name in workers and runs_model(name, model)]
        # Recorded as skipped rows with the reason (never failures): the report names them under the case.
        for name in MAIN_CONTENDERS:
            if name in workers and not runs_model(name, model):
                reason = not_run_reason(name, model)
                rows.append({"contender": name, "variant": f"{model}-b{batch_size}", **args, "status": "skipped",
                             "reason": reason})
                log(f"  {name}: not run for {model} ({reason})")
        rows += interleaved(workers, setups, plan.repeats, log)
    if "jaxlin_fused" in workers and plan.sweep:
        log(f"fused sweep: linear, batch 100, {plan.sweep_steps} steps")
        setups = [("jaxlin_fused", f"K{k}-unroll{u}", {"model": "linear", "batch_size": 100,
                   "num_steps": plan.sweep_steps, "steps_per_call": k, "unroll": u}) for k, u in plan.sweep]
        rows += [dict(r, sweep=True) for r in interleaved(workers, setups, plan.repeats, log)]
    if "jaxlin_data_parallel" in workers and plan.device_counts:
        available = workers["jaxlin_data_parallel"].hello.get("devices", 1)
        counts = [n for n in plan.device_counts if n <= available] or [1]
        log(f"data parallel: linear, batch 100, {plan.vmap_steps} steps, devices {counts}")
        setups = [("jaxlin_data_parallel", f"D{n}", {"model": "linear", "batch_size": 100,
                                                     "num_steps": plan.vmap_steps, "devices": n}) for n in counts]
        rows += [dict(r, devices=int(r["variant"][1:])) for r in interleaved(workers, setups, plan.repeats, log)]
    many = [name for name in ("jaxlin_vmap", "jaxlin_sweep") if name in workers]
    if many and plan.num_models:
        log(f"many models ({', '.join(many)}): linear, batch 100, {plan.vmap_steps} steps")
        setups = [(name, f"M{m}", {"model": "linear", "batch_size": 100, "num_steps": plan.vmap_steps,
                                   "num_models": m}) for m in plan.num_models for name in many]
        rows += interleaved(workers, setups, plan.repeats, log)
    return rows


def peak_rates(workers: dict, log, rounds: int = 3) -> dict:
    """The machine's large-matmul rate, through XLA (a JAX worker) and NumPy (the floor's worker),
    interleaved; the best of each. `peak_gflops` is the higher: what every row is a fraction of."""
    sources = {"xla": next((n for n in workers if n.startswith("jaxlin")), None),
               "numpy": "numpy_floor" if "numpy_floor" in workers else None}
    best: dict[str, dict] = {}
    for _ in range(rounds):
        for source, name in sources.items():
            if name is None:
                continue
            try:
                reply = workers[name].ask("peak")
            except RuntimeError as err:
                best.setdefault(source, {"status": "failed", "reason": str(err)})
                continue
            if reply["gflops"] > best.get(source, {}).get("gflops", 0):
                best[source] = {**reply, "worker": name}
    rates = [b["gflops"] for b in best.values() if "gflops" in b]
    peak = {"by_source": best, "peak_gflops": max(rates) if rates else None}
    log("peak matmul: " + ", ".join(f"{k} {v.get('gflops', float('nan')):.1f} GFLOP/s" for k, v in best.items()))
    return peak


def add_flops(workers: dict, rows: list[dict], peak: float | None, log) -> None:
    """Each row's FLOPs per model-step (XLA's cost analysis of jaxlin's update for its model and batch),
    its GFLOP/s and its fraction of the measured peak."""
    name = next((n for n in ("jaxlin_fused", "jaxlin_per_step", "jaxlin_sweep") if n in workers), None)
    if name is None:
        return
    counted: dict[tuple, float | None] = {}
    for row in rows:
        if row.get("status") != "ok":
            continue
        case = (row["model"], row["batch_size"])
        if case not in counted:
            try:
                counted[case] = workers[name].ask("flops", model=case[0], batch_size=case[1])["flops_per_step"]
            except RuntimeError as err:
                log(f"flops of {case}: {err}")
                counted[case] = None
        if counted[case] is None:
            continue
        gflops = counted[case] * row["model_steps_per_second"] / 1e9
        row.update(flops_per_step=counted[case], gflops=gflops, fraction_of_peak=gflops / peak if peak else None)


# What a contender's `setup` takes; a throughput row holds them beside what it measured (`interleaved` builds
# each row from them), so a profile pass sets the row up again from the row alone.
SETUP_ARGS = ("model", "batch_size", "num_steps", "steps_per_call", "unroll", "devices", "num_models")


def trace_name(row: dict) -> str:
    """`<case>-<contender>`, the folder of a row's trace: the case as MODEL-bBATCH-sSTEPS (a user's
    MODULE:NAME with its colon made a dot), then the variant of a sweep, data-parallel or many-models row."""
    case = f"{row['model']}-b{row['batch_size']}-s{row['num_steps']}"
    if row["variant"] != f"{row['model']}-b{row['batch_size']}":
        case += f"-{row['variant']}"
    return re.sub(r"[^A-Za-z0-9._-]", ".", case) + f"-{row['contender']}"


def profile_rows(workers: dict, rows: list[dict], steps: ProfileSteps, directory: Path, log) -> list[dict]:
    """`--profile`: each row a JAX contender timed is set up again in its worker (compiled and run once, as
    for its timing) and run once more, untimed, under a `jax.profiler` trace of steps `steps` written to
    `directory/<trace_name>`. This runs after every timed repeat of the worker phase, and the later phases
    run in fresh processes, so no timing is taken while a trace is running or after one ran in its process.
    One record per row: "ok" (the trace's steps and the line saying how to open it), "not traced" (no step
    of `steps` in the row; the line says so) or "failed" (the reason)."""
    chosen = [r for r in rows if r.get("status") == "ok" and CONTENDERS[r["contender"]][2] == "jax"]
    if not chosen:
        return []
    log(f"profile: {len(chosen)} JAX row(s), one untimed run each, traced ({steps.flag}) "
        f"into {directory}")
    traces = []
    for row in chosen:
        name = trace_name(row)
        record = {key: row[key] for key in ("contender", "variant", "model", "batch_size", "num_steps")}
        record.update(case=name, directory=str(directory / name))
        try:
            reply = workers[row["contender"]].ask(
                "profile", setup={key: row[key] for key in SETUP_ARGS if key in row},
                directory=str(directory / name), start=steps.start, stop=steps.stop)
        except RuntimeError as err:  # recorded; the other rows go on
            record.update(status="failed", reason=str(err))
            log(f"  {name}: profile failed: {one_line(err)}")
        else:
            record.update(status="ok" if reply["traced"] else "not traced", steps=reply["steps"],
                          lines=reply["lines"])
        traces.append(record)
    return traces


def time_to_accuracy(names: list[str], plan: Plan, data_dir: str, native_blas: bool, log) -> list[dict]:
    """Wall time from process start until the test accuracy first reaches the target.

    Every contender trains on the same batch order, so each needs the same number of steps
    and the time says how fast it gets there, not how lucky its shuffle was.
    """
    log(f"time to {plan.tta_target:.1%}: evaluating every {plan.tta_eval_every} steps, "
        f"{plan.tta_repeats} fresh processes each")
    from jaxlin.data.datasets import load_idx_dir

    num_train = len(load_idx_dir(data_dir).train)
    rows = {name: {"contender": name, "runs": []} for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        order_file = str(Path(tmp) / "order.npy")
        import numpy as np

        np.save(order_file, shared_order(num_train, 100, plan.tta_max_steps))
        request = {"model": "linear", "batch_size": 100, "eval_every": plan.tta_eval_every,
                   "max_steps": plan.tta_max_steps, "target": plan.tta_target, "order_file": order_file}
        for repeat in range(plan.tta_repeats):
            for name in names[repeat % len(names):] + names[:repeat % len(names)]:
                try:
                    worker = Worker(name, data_dir, worker_env(name, native_blas), plan.worker_options())
                    reply = worker.ask("time_to_accuracy", **request)
                    reply["wall_seconds"] = time.perf_counter() - worker.started
                    worker.close()
                except RuntimeError as err:  # recorded; the other contenders go on
                    log(f"  {name}: time to accuracy failed: {str(err)[:200]}")
                    reply = {"error": str(err)}
                rows[name]["runs"].append(reply)
    for row in rows.values():
        if any("error" in r for r in row["runs"]):
            row.update(status="failed", reason=next(r["error"] for r in row["runs"] if "error" in r))
            continue
        walls = [r["wall_seconds"] for r in row["runs"]]
        row.update(median_wall_seconds=statistics.median(walls), min_wall_seconds=min(walls),
                   max_wall_seconds=max(walls), steps=row["runs"][0]["steps"],
                   reached=all(r["reached"] for r in row["runs"]))
        row["status"] = "ok"
        log(f"  {row['contender']:<16} {row['median_wall_seconds']:6.2f} s  ({row['steps']} steps)")
    return list(rows.values())


def portable(text: str, tmp: Path | None = None) -> str:
    """A command or path as it would be typed from the repo root: no machine-specific prefixes."""
    replacements = [(str(Path(sys.executable).with_name("jaxlin")), "jaxlin"), (sys.executable, "python")]
    if tmp is not None:
        replacements.append((str(tmp), "<tmp>"))
    replacements += [(str(ROOT) + "/", ""), (str(ROOT.parent) + "/", "../")]
    for old, new in replacements:
        text = text.replace(old, new)
    return text


def end_to_end_commands(data_dir: str, out: Path, cold_cache: Path, warm_cache: Path) -> dict[str, tuple]:
    """What a user runs for the tutorial, as (argv, extra environment): the whole process is timed."""
    jaxlin = str(Path(sys.executable).with_name("jaxlin"))
    train = [jaxlin, "train", "--data-dir", data_dir, "--output-dir", str(out), "--overwrite", "--no-progress"]
    commands = {
        "tf_reference_script": ([sys.executable, str(ROOT / "bench/tutorial/tf_tutorial.py"), "--data-dir", data_dir],
                                {}, "tensorflow"),
        "torch_script": ([sys.executable, str(ROOT / "bench/tutorial/torch_tutorial.py"), "--data-dir", data_dir],
                         {}, "torch"),
        "jaxlin_train_cold": (train, {"JAXLIN_CACHE_DIR": str(cold_cache)}, "jax"),
        "jaxlin_train_warm": (train, {"JAXLIN_CACHE_DIR": str(warm_cache)}, "jax"),
        "jaxlin_train_no_figures_warm": ([*train, "--no-figures"], {"JAXLIN_CACHE_DIR": str(warm_cache)}, "jax"),
        "jaxlin_help": ([jaxlin, "--help"], {}, "jax"),
    }
    return {name: (argv, env) for name, (argv, env, module) in commands.items()
            if importlib.util.find_spec(module) is not None}


def end_to_end(plan: Plan, data_dir: str, log) -> list[dict]:
    """Whole-process wall time of the tutorial run, imports included: the TF and PyTorch scripts and
    `jaxlin train` cold (empty caches each time), warm and without figures; one warm-up round, then
    `plan.e2e_repeats` interleaved rounds. Ratios are to the TF script's median."""
    import shutil

    log(f"end to end: whole processes, {plan.e2e_repeats} interleaved rounds after a warm-up")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        commands = end_to_end_commands(data_dir, tmp / "run", tmp / "cold-cache", tmp / "warm-cache")
        rows = {name: {"name": name, "command": portable(" ".join(argv), tmp), "seconds": []}
                for name, (argv, _) in commands.items()}
        first_timed = 1 if plan.e2e_warm_up else 0
        for round_number in range(plan.e2e_repeats + first_timed):
            names = list(commands)
            names = names[round_number % len(names):] + names[:round_number % len(names)]
            for name in names:
                argv, extra = commands[name]
                shutil.rmtree(tmp / "cold-cache", ignore_errors=True)
                start = time.perf_counter()
                done = subprocess.run(argv, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **extra},
                                      capture_output=True, text=True, timeout=600)
                seconds = time.perf_counter() - start
                if done.returncode != 0:
                    rows[name].update(status="failed", reason=done.stderr.strip()[-500:])
                elif round_number >= first_timed:  # a warm-up round fills the caches and the file system
                    rows[name]["seconds"].append(seconds)
    reference = None
    for row in rows.values():
        if row.get("status") == "failed" or not row["seconds"]:
            row.setdefault("status", "failed")
            continue
        row.update(status="ok", median_seconds=statistics.median(row["seconds"]), min_seconds=min(row["seconds"]),
                   max_seconds=max(row["seconds"]))
    if rows.get("tf_reference_script", {}).get("status") == "ok":
        reference = rows["tf_reference_script"]["median_seconds"]
    for row in rows.values():
        if row["status"] == "ok":
            row["ratio_to_tf_reference"] = row["median_seconds"] / reference if reference else None
            log(f"  {row['name']:<30} {row['median_seconds']:6.2f} s")
        else:
            log(f"  {row['name']:<30} failed: {row.get('reason', '')[:200]}")
    return list(rows.values())


STEADY_MODES = ("default", "bare")


def steady_flags(model: str, plan: Plan) -> list[str]:
    """The flags that name the model and its optimizer for `jaxlin train`: none for the tutorial's linear
    model (the CLI's defaults are the bench's sgd(0.5)); for the others the optimizer the bench's other rows
    train them with (plain SGD at 0.1 for the MLP and the CNN, so the TF reference's and PyTorch's rows
    compare the same arithmetic), or
    --optimizer/--learning-rate when given."""
    from bench.common import optimizer_config
    from jaxlin.config import Config

    default, wanted = Config(), optimizer_config(model, plan.optimizer, plan.learning_rate)
    flags = [] if model == default.model else ["--model", model]
    if wanted.optimizer != default.optimizer:
        flags += ["--optimizer", wanted.optimizer]
    if wanted.learning_rate != default.learning_rate:
        flags += ["--learning-rate", repr(wanted.learning_rate)]
    return flags


def steady_commands(plan: Plan, out: Path) -> dict[tuple[str, str, int], list[str]]:
    """(model, mode, steps) -> argv. "default": `jaxlin train` as a user runs it (only the steps and an output
    directory, no progress bar, no figures: drawn once at the end, not per step); "bare": the same command with
    one evaluation at the end and no checkpoints (`--eval-every <steps> --checkpoint-every 0`). The data comes
    from JAXLIN_DATA_DIR, as a user's set-up would give it."""
    jaxlin = Path(sys.executable).with_name("jaxlin")
    start = [str(jaxlin)] if jaxlin.exists() else [sys.executable, "-m", "jaxlin.cli"]
    commands = {}
    for model, lengths in plan.steady_lengths:
        for mode in STEADY_MODES:
            for steps in lengths:
                argv = [*start, "train", *steady_flags(model, plan), "--num-steps", str(steps),
                        "--output-dir", str(out / f"{model}-{mode}-{steps}"), "--no-progress", "--no-figures"]
                if mode == "bare":
                    argv += ["--eval-every", str(steps), "--checkpoint-every", "0"]
                commands[(model, mode, steps)] = argv
    return commands


def _run_record(output_dir: Path) -> dict:
    """What a finished run says of itself: its steps, evaluations and timings (metrics.json)."""
    try:
        metrics = json.loads((output_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}
    timings = {k: v for k, v in metrics.get("timings", {}).items() if isinstance(v, (int, float))}
    return {"num_steps_trained": metrics.get("num_steps"), "evaluations": len(metrics.get("evaluations", [])),
            "checkpoints": sorted(int(p.name) for p in (output_dir / "checkpoints").glob("*") if p.name.isdigit()),
            "timings": timings}


def train_steady_state(plan: Plan, data_dir: str, throughput_rows: list[dict], log) -> dict:
    """`jaxlin train` as a whole process, per model: its defaults and the bare loop (one evaluation at the
    end, no checkpoints), each at the plan's lengths. One warm-up round (it fills the compilation cache, as a
    user's earlier runs would), then `plan.steady_repeats` rounds, each running every command once in an order
    rotated by one per round. Steady state per step = (median of the long run - median of the short run) /
    (the step difference), so start-up, compiling and the final evaluation cancel."""
    import shutil

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        commands = steady_commands(plan, tmp)
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "JAXLIN_DATA_DIR": str(Path(data_dir).resolve()),
               "JAXLIN_CACHE_DIR": str(tmp / "cache")}
        runs = {key: {"model": key[0], "mode": key[1], "num_steps": key[2], "seconds": [],
                      "command": portable(" ".join(argv), tmp)} for key, argv in commands.items()}
        first_timed = 1 if plan.steady_warm_up else 0
        log(f"jaxlin train steady state: {len(commands)} whole-process commands, {plan.steady_repeats} interleaved "
            f"rounds{' after a warm-up' if first_timed else ''}")
        for round_number in range(plan.steady_repeats + first_timed):
            keys = [k for k in commands if runs[k].get("status") != "failed"]
            keys = keys[round_number % len(keys):] + keys[:round_number % len(keys)] if keys else []
            for key in keys:
                output_dir = Path(commands[key][commands[key].index("--output-dir") + 1])
                shutil.rmtree(output_dir, ignore_errors=True)
                start = time.perf_counter()
                try:
                    done = subprocess.run(commands[key], env=env, capture_output=True, text=True, timeout=1800)
                except subprocess.TimeoutExpired:
                    runs[key].update(status="failed", reason="timed out after 1800 s")
                    continue
                seconds = time.perf_counter() - start
                if done.returncode != 0:
                    runs[key].update(status="failed", reason=(done.stderr.strip() or done.stdout.strip())[-500:])
                    log(f"  {' '.join(map(str, key))}: failed: {one_line(runs[key]['reason'])}")
                elif round_number >= first_timed:
                    runs[key]["seconds"].append(seconds)
                    runs[key].update(_run_record(output_dir))
    for run in runs.values():
        if run.get("status") != "failed" and run["seconds"]:
            run.update(status="ok", median_seconds=statistics.median(run["seconds"]))
        else:
            run.setdefault("status", "failed")
            run.setdefault("reason", "no timed run")
    rows = steady_rows(list(runs.values()), throughput_rows, plan.steady_lengths)
    log_steady_rows(rows, log)
    return {"flags": {model: steady_flags(model, plan) for model, _ in plan.steady_lengths},
            "repeats": plan.steady_repeats, "runs": list(runs.values()), "rows": rows}


def log_steady_rows(rows: list[dict], log) -> None:
    for row in rows:
        if row["status"] == "ok":
            ratio, tf, torch = row["default_vs_bare"], row["speedup_vs_tf_reference"], row["speedup_vs_torch_eager"]
            tf2 = row["speedup_vs_best_tf2"]
            log(f"  {row['model']:<7} {row['num_steps']:>7,} steps: default {row['default_us_per_step']:8.1f} "
                f"us/step, bare {row['bare_us_per_step']:8.1f}"
                + (f", default/bare {ratio:.2f}" if ratio is not None else f" ({row['note']})")
                + (f", TF reference / default {tf:.2f}" if tf is not None else "")
                + (f", PyTorch eager / default {torch:.2f}" if torch is not None else "")
                + (f", {row['best_tf2']} / default {tf2:.2f}" if tf2 is not None else ""))
        else:
            log(f"  {row['model']:<7} {row['num_steps']:>7,} steps: failed: {one_line(row['reason'])}")


def steady_rows(runs: list[dict], throughput_rows: list[dict], lengths: list[tuple[str, tuple[int, ...]]]
                ) -> list[dict]:
    """One row per model and long length: the default's and the bare loop's steady µs/step (long minus
    short, medians), their ratio, and the ratios to the TF reference's, PyTorch eager's, the faster TF2
    loop's and the fused loop's µs/step at that model, batch 100 (the throughput rows of the same bench run;
    None when not measured: the TF reference builds no CNN, TF2 runs only when asked for)."""
    by_key = {(r["model"], r["mode"], r["num_steps"]): r for r in runs}
    per_step = {(r["contender"], r["model"]): r["median_us_per_step"] for r in throughput_rows
                if r.get("status") == "ok" and r.get("batch_size") == 100 and not r.get("sweep")
                and r["contender"] in STEADY_PEERS}
    rows = []
    for model, steps in lengths:
        short = steps[0]
        tf, fused = per_step.get(("tf_reference", model)), per_step.get(("jaxlin_fused", model))
        torch = per_step.get(("torch_eager", model))
        tf2 = {name: per_step[(name, model)] for name in ("tf2_function", "tf2_xla") if (name, model) in per_step}
        best_tf2 = min(tf2, key=tf2.get) if tf2 else None
        for long in steps[1:]:
            row = {"model": model, "num_steps": long, "short_steps": short, "tf_reference_us_per_step": tf,
                   "torch_eager_us_per_step": torch, "best_tf2": best_tf2,
                   "best_tf2_us_per_step": tf2.get(best_tf2), "jaxlin_fused_us_per_step": fused}
            needed = [by_key.get((model, mode, n)) for mode in STEADY_MODES for n in (short, long)]
            failed = [r for r in needed if r is None or r.get("status") != "ok"]
            if failed:
                row.update(status="failed", reason="; ".join(
                    f"{r['mode']} {r['num_steps']} steps: {one_line(r.get('reason', ''))}" if r else "not run"
                    for r in failed))
                rows.append(row)
                continue
            for mode in STEADY_MODES:
                long_run, short_run = by_key[(model, mode, long)], by_key[(model, mode, short)]
                row[f"{mode}_us_per_step"] = (1e6 * (long_run["median_seconds"] - short_run["median_seconds"])
                                              / (long - short))
            default, bare = row["default_us_per_step"], row["bare_us_per_step"]
            if default <= 0 or bare <= 0:  # recorded as measured; no ratio is taken of it
                row["note"] = ("a long run took no longer than the short one: the start-up's noise exceeds the "
                               "steps' time (longer runs needed)")
            peers = {"tf_reference": tf, "torch_eager": torch, "best_tf2": row["best_tf2_us_per_step"]}
            row.update(status="ok", default_vs_bare=default / bare if default > 0 and bare > 0 else None,
                       default_vs_jaxlin_fused=default / fused if fused and default > 0 else None)
            for name, us in peers.items():  # > 1: jaxlin train is faster per step than that peer
                row[f"speedup_vs_{name}"] = us / default if us and default > 0 else None
                row[f"bare_speedup_vs_{name}"] = us / bare if us and bare > 0 else None
            rows.append(row)
    return rows


def run(plan: Plan, data_dir: str, names: list[str], native_blas: bool, log=print,
        profile: ProfileSteps | None = None, profile_dir: Path | None = None) -> dict:
    """The whole benchmark; with `profile`, the JAX rows are traced into `profile_dir` once timed (see
    `profile_rows`)."""
    started = datetime.datetime.now(datetime.UTC)
    contenders, workers = {}, {}
    for name in names:
        reason = skip_reason(name, plan)
        if reason:
            contenders[name] = {"status": "skipped", "reason": reason}
            log(f"{name}: skipped ({reason})")
            continue
        try:
            worker = Worker(name, data_dir, worker_env(name, native_blas), plan.worker_options())
            if "skipped" in worker.hello:
                contenders[name] = {"status": "skipped", "reason": worker.hello["skipped"]}
                log(f"{name}: skipped ({worker.hello['skipped']})")
                worker.process.wait()
                continue
            info = worker.ask("info")
        except RuntimeError as err:  # a worker that does not start: recorded, the others go on
            contenders[name] = {"status": "failed", "reason": str(err)}
            log(f"{name}: failed to start: {one_line(err)}")
            continue
        workers[name] = worker
        contenders[name] = {"status": "ok", "startup_seconds": worker.hello["startup_seconds"], "info": info}
    try:
        peak = peak_rates(workers, log) if plan.peak else {"peak_gflops": None}
        rows = throughput(workers, plan, log)
        add_flops(workers, rows, peak["peak_gflops"], log)
        traces = profile_rows(workers, rows, profile, Path(profile_dir), log) if profile is not None else None
    finally:
        for name, worker in workers.items():
            contenders[name]["max_rss_mb"] = worker.close()["max_rss_mb"]
    tta_names = [n for n in TTA_CONTENDERS if n in workers]
    tta = time_to_accuracy(tta_names, plan, data_dir, native_blas, log) if plan.tta_repeats and tta_names else []
    e2e = end_to_end(plan, data_dir, log) if plan.e2e_repeats else []
    steady = (train_steady_state(plan, data_dir, rows, log) if plan.steady_repeats and plan.steady_lengths
              else {"runs": [], "rows": []})
    results = {
        "meta": {"started": started.isoformat(timespec="seconds"), "python": platform.python_version(),
                 "cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
                 "plan": dataclasses.asdict(plan), "data_dir": recorded_data_dir(data_dir)},
        "contenders": contenders,
        "peak": peak,
        "throughput": rows,
        "time_to_accuracy": tta,
        "end_to_end": e2e,
        "train_steady_state": steady,
    }
    if traces is not None:
        results["profile"] = {"steps": profile.describe(), "directory": str(profile_dir),
                              "pass": "untimed: one more run of each JAX row after every timed repeat",
                              "traces": traces}
    return results
