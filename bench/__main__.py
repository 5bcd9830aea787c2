"""`python -m bench`: measure jaxlin's training loop against TensorFlow, PyTorch and a NumPy floor.

Writes <device>.json (every raw repeat) and <device>.png into --out (default: jaxlin-bench/ in the working
directory; the committed bench/results only when named), and prints a table. `--cases MODULE:NAME:BATCH:STEPS`
times a user's own model (jaxlin_per_step and jaxlin_fused only; dropout and batch-norm state too),
`--optimizer` another optimizer than the tutorial's SGD.
`--quick` runs a few steps of each contender to prove the harness works; its timings mean nothing.
`--only train_steady_state` times only `jaxlin train`'s steady state per step (whole processes, its defaults
against the bare loop; see bench/NOTES.md) and the throughput rows it is compared to.
`--profile [START:STOP]` writes a `jax.profiler` trace of each JAX row's steps START to STOP (default: its
first chunks) into <out>/profile/<case>-<contender>/, from one more, untimed, run after all the timing.
`--accelerator-check` runs the accelerator check instead (bench/accelerator_check.py: one JSON file for a lent GPU).
`--replot RESULTS_JSON` redraws a saved run and rewrites the generated tables of docs/benchmark.md
(the lines between its two marker comments); those tables are never edited by hand.

Exit status: 0 when every requested measurement ran; 1 when any failed (a contender that did not start, a
case that did not compile or run, a time-to-accuracy or end-to-end run), each named on stderr in one line
(contender, case, reason) after the results and chart are written; 2 for bad arguments (nothing written).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import tempfile
from pathlib import Path

from bench import report, runner
from bench.worker import CONTENDERS
from jaxlin.config import MODELS, is_model_reference
from jaxlin.data.datasets import DATA_DIR_ENV, DataError, load_idx_dir
from jaxlin.errors import JaxlinError
from jaxlin.runtime.profiling import PROFILE_DIR, parse_profile_steps

DEFAULT_OUT = "jaxlin-bench"


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line and exit 2, pointing at --help instead of printing the usage block (as jaxlin's
    commands do)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def device_slug(results: dict) -> str:
    for name in ("jaxlin_fused", "jaxlin_per_step", "jaxlin_vmap"):
        kind = results["contenders"].get(name, {}).get("info", {}).get("device_kind")
        if kind:
            return kind.lower().replace(" ", "-")
    return "cpu"


def parse_case(item: str) -> tuple[str, int, int]:
    """MODEL:BATCH:STEPS, MODEL a built-in name or a user's MODULE:NAME (so read from the right); raises
    ValueError with a one-line reason."""
    parts = item.strip().rsplit(":", 2)
    if len(parts) != 3:
        raise ValueError(f"expected MODEL:BATCH:STEPS or MODULE:NAME:BATCH:STEPS, got {item!r}")
    model, batch_size, num_steps = parts
    try:
        case = (model, int(batch_size), int(num_steps))
    except ValueError:
        raise ValueError(f"batch and steps must be whole numbers in {item!r}") from None
    if model not in MODELS and not is_model_reference(model):
        raise ValueError(f"unknown model {model!r} in {item!r}: one of {', '.join(MODELS)}, or MODULE:NAME")
    if case[1] < 1 or case[2] < 1:
        raise ValueError(f"batch and steps must be at least 1 in {item!r}")
    return case


def check_user_models(cases: list[tuple[str, int, int]]) -> None:
    """Builds each user's model once here (imported from the working directory, traced with
    `jax.eval_shape`), so that a bad reference is one line before any worker starts; raises JaxlinError.
    A model with a training mode (dropout, batch-norm statistics) is timed by the jaxlin per-step and fused
    contenders as `jaxlin train` trains it; the other contenders time the built-in models only."""
    from jaxlin.config import INPUT_SIZE, NUM_CLASSES
    from jaxlin.models import get_model

    for model in sorted({model for model, _, _ in cases if is_model_reference(model)}):
        get_model(model, input_size=INPUT_SIZE, num_classes=NUM_CLASSES)


def check_optimizer(name: str | None, rate: float | None) -> None:
    """The optimizer settings as jaxlin validates them (a name it knows, a learning rate it accepts)."""
    from bench.common import optimizer_config

    optimizer_config("linear", name, rate).validate()


# MNIST's training split as the contenders load it (`bench.common.load_data`: the tutorial's 55,000).
MNIST_TRAIN_EXAMPLES = 60_000 - 5_000


def check_cases_train(cases: list[tuple[str, int, int]], name: str | None, rate: float | None) -> None:
    """What `jaxlin train` checks before it trains, for each case: a batch no larger than the training
    split, and the optimizer's init and one update traced on the case's model (a `MODULE:NAME` factory
    whose update cannot train is refused here, not timed); raises JaxlinError."""
    from bench.common import optimizer_config
    from jaxlin import optimizers
    from jaxlin.errors import ConfigError
    from jaxlin.training.trainer import make_optimizer

    for model, batch_size, _ in cases:
        if batch_size > MNIST_TRAIN_EXAMPLES:
            raise ConfigError(f"--cases {model}:{batch_size}: batch size {batch_size:,} is larger than the training "
                              f"set ({MNIST_TRAIN_EXAMPLES:,} examples)")
        if name is not None:  # the tutorial's SGD (the default) trains any model
            optimizers.check_traces(make_optimizer(optimizer_config(model, name, rate)), _bench_model(model),
                                    f"--optimizer {name} (case {model})")


def _bench_model(model: str):
    """The model a case names, as the JAX contenders build it."""
    from bench.jax_contenders import _model

    return _model(model)


def _parse_cases(parser, text: str) -> list[tuple[str, int, int]]:
    cases = []
    for item in text.split(","):
        try:
            cases.append(parse_case(item))
        except ValueError as err:
            parser.error(f"--cases: {err}")
    return cases


ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmark.md"
BEGIN = "<!-- begin: generated by python -m bench --replot {} -->"
BEGIN_PATTERN = re.compile(r"<!-- begin: generated by python -m bench --replot (\S+) -->")
END = "<!-- end: generated -->"


class DocsError(Exception):
    """A docs file whose generated part cannot be found; the message is one line."""


def generated_part(text: str) -> tuple[int, int, str]:
    """Where the generated part of a docs text lies: the offsets just after the begin marker's line and at
    the start of the end marker's line, and the results file the begin marker names."""
    begins, ends, offset = [], [], 0
    for line in text.splitlines(keepends=True):
        match = BEGIN_PATTERN.fullmatch(line.strip())
        if match:
            begins.append((offset + len(line), match.group(1)))
        elif line.strip() == END:
            ends.append(offset)
        offset += len(line)
    wanted = f"the lines '{BEGIN.format('RESULTS_JSON')}' and '{END}'"
    if not begins or not ends:
        raise DocsError(f"has no generated part: add {wanted} where the tables go")
    if len(begins) > 1 or len(ends) > 1:
        raise DocsError(f"has more than one generated part: keep one pair of {wanted}")
    (start, source), end = begins[0], ends[0]
    if end < start:
        raise DocsError(f"has its end marker before its begin marker: {wanted} go in that order")
    return start, end, source


def write_atomically(path: Path, text: str) -> None:
    """Writes a temporary file beside path, then renames it over path: a reader sees the old or the new text."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def replot(path: Path, docs: Path | None = None) -> int:
    """Redraws a saved run's chart and table and rewrites the generated part of the docs; the derived
    targets are recomputed, the raw data kept. Without an explicit docs file, docs/benchmark.md is
    rewritten only from the results file its begin marker names (another run leaves it alone)."""
    target = docs or DOCS
    try:
        text = target.read_bytes().decode("utf-8")
        start, end, source = generated_part(text)
    except (OSError, UnicodeDecodeError, DocsError) as err:
        reason = err.strerror if isinstance(err, OSError) else err
        print(f"python -m bench: error: {target}: {reason} (nothing written)", file=sys.stderr)
        return 2
    write_docs = docs is not None or (ROOT / source).resolve() == path.resolve()
    results = json.loads(path.read_text())
    results["targets"] = report.targets(results)
    path.write_text(json.dumps(results, indent=1) + "\n")
    report.chart(results, path.with_suffix(".png"))
    print(report.table(results))
    print("\ntargets:", json.dumps(results["targets"], indent=1))
    print(f"\nwrote {path.with_suffix('.png')}")
    if write_docs:
        write_atomically(target, text[:start] + "\n" + report.markdown(results) + "\n" + text[end:])
        print(f"wrote the generated part of {target}")
    else:
        print(f"left {target} alone: its tables are generated from {source} (pass --docs to write them)")
    return 0


def _unwritable(directory: Path) -> str | None:
    """Why results cannot be written into `directory`, or None; checked before anything runs by making it (it
    would be made anyway) and a scratch file in it."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as err:
        return err.strerror or str(err)
    return None


def main(argv=None) -> int:
    parser = _Parser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few steps of everything (a smoke test)")
    parser.add_argument("--data-dir", default=os.environ.get(DATA_DIR_ENV),
                        help=f"MNIST IDX directory (default: ${DATA_DIR_ENV}, else jaxlin's download cache)")
    parser.add_argument("--out", default=DEFAULT_OUT,
                        help="directory for the results (default: %(default)s/ in the working directory; the "
                        "committed results are regenerated with --out bench/results)")
    parser.add_argument("--contenders", default=None,
                        help="comma-separated subset of: " + ", ".join(CONTENDERS) + " (default: all; with --only "
                        "train_steady_state: " + ",".join(runner.STEADY_CONTENDERS) + ")")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per case (default: 5, quick 2)")
    parser.add_argument("--cases", default=None, metavar="MODEL:BATCH:STEPS,...",
                        help="throughput cases instead of the plan's, e.g. linear:100:1000,mlp:1000:100; MODEL may "
                        "be your own MODULE:NAME (as for jaxlin train --model; MODULE imported from the working "
                        "directory), e.g. mymodels:TinyMLP:100:500, timed by jaxlin_per_step and jaxlin_fused only "
                        "(models with dropout or batch-norm state too, as jaxlin train trains them)")
    parser.add_argument("--optimizer", default=None, metavar="NAME",
                        help="the jaxlin contenders' optimizer, as jaxlin train --optimizer takes it (default: the "
                        "tutorial's SGD, which every contender runs; with another, only the jaxlin ones run)")
    parser.add_argument("--learning-rate", type=float, default=None, metavar="LR",
                        help="the jaxlin contenders' learning rate (default: 0.5 for linear, 0.1 for the others)")
    parser.add_argument("--no-sweep", action="store_true", help="skip the fused-loop K/unroll sweep")
    parser.add_argument("--no-vmap", action="store_true",
                        help="skip the many-models runs (the jaxlin_vmap and jaxlin_sweep contenders)")
    parser.add_argument("--no-parallel", action="store_true",
                        help="skip the data-parallel runs of the linear model (the jaxlin_data_parallel contender)")
    parser.add_argument("--no-tta", action="store_true", help="skip the time-to-accuracy runs")
    parser.add_argument("--no-e2e", action="store_true", help="skip the end-to-end (whole process) runs")
    parser.add_argument("--no-steady-state", action="store_true",
                        help="skip the jaxlin train steady-state runs (whole processes, defaults against the bare "
                        "loop)")
    parser.add_argument("--steady-repeats", type=int, default=None, metavar="N",
                        help="interleaved timed rounds of the steady-state runs (default: 3, quick 1; each round "
                        "runs every command once, after one untimed round)")
    parser.add_argument("--only", choices=["train_steady_state"], default=None,
                        help="train_steady_state: only the jaxlin train steady-state rows, and the throughput of "
                        "the TF reference and the fused loop at their models (batch 100) that they are compared "
                        "to (--contenders and --cases still choose those)")
    parser.add_argument("--replot", metavar="RESULTS_JSON",
                        help="only redraw the table and chart of a saved results file, and rewrite the "
                        "generated tables of --docs")
    parser.add_argument("--docs", metavar="PATH", type=Path, default=None,
                        help="with --replot: the Markdown file whose part between the lines "
                        f"'{BEGIN.format('RESULTS_JSON')}' and '{END}' is rewritten (default: "
                        f"{DOCS.relative_to(ROOT)}, and only from the results file its marker names)")
    parser.add_argument("--keep-blas-pin", action="store_true",
                        help="keep OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE for the NumPy floor too")
    parser.add_argument("--profile", nargs="?", const="auto", default=None, metavar="START:STOP",
                        help="after the timing, run each JAX row (jaxlin_* contenders, every case) once more, "
                        "untimed, with a jax.profiler trace of the chunks holding its steps START to STOP "
                        f"(default: its first chunks) in OUT/{PROFILE_DIR}/<case>-<contender>/, for TensorBoard's "
                        "Profile tab, XProf or Perfetto; TF, PyTorch and NumPy are not traced")
    parser.add_argument("--accelerator-check", action="store_true",
                        help="instead of the benchmark: the accelerator check (bench/accelerator_check.py; the "
                        "device's tests, fused vs per-step, a float32/bfloat16 sweep, data parallel, determinism) "
                        "into <out>/<platform>-check.json; with --quick, tiny sizes")
    parser.add_argument("--check-tests", choices=["none", "quick", "gpu"], default=None,
                        help="with --accelerator-check: which tests it runs (default: gpu, the device's test files; "
                        "with --quick: quick, one tiny test)")
    parser.add_argument("--check-budget", type=float, default=None, metavar="SECONDS",
                        help="with --accelerator-check: the sections that would start after this many seconds "
                        "are skipped (default: 450)")
    args = parser.parse_args(argv)
    try:
        profile = parse_profile_steps(args.profile)
    except JaxlinError as err:
        parser.error(str(err))
    if profile is not None and args.replot:
        parser.error("--profile traces a benchmark run; --replot only redraws a saved one")
    if not args.accelerator_check and (args.check_tests is not None or args.check_budget is not None):
        parser.error("--check-tests and --check-budget go with --accelerator-check")
    if args.check_budget is not None and not (math.isfinite(args.check_budget) and args.check_budget > 0):
        parser.error(f"--check-budget must be a finite number of seconds > 0, got {args.check_budget:g}")
    if args.accelerator_check:
        given = [flag for flag, value in (("--cases", args.cases), ("--only", args.only),
                                          ("--contenders", args.contenders), ("--replot", args.replot),
                                          ("--repeats", args.repeats), ("--profile", args.profile))
                 if value is not None]
        if given:
            parser.error(f"--accelerator-check runs its own fixed sections: it takes no {', '.join(given)}")
        problem = _unwritable(Path(args.out))
        if problem:
            parser.error(f"--out {args.out}: {problem}")
    if args.docs is not None and not args.replot:
        parser.error("--docs goes with --replot")
    if args.only and args.no_steady_state:
        parser.error("--only train_steady_state and --no-steady-state exclude each other")
    if args.replot:
        return replot(Path(args.replot), args.docs)
    if not args.data_dir:  # a user's installed jaxlin has MNIST in its cache after `jaxlin download`
        from jaxlin.data.download import cached_files

        cached = cached_files("mnist")
        args.data_dir = str(cached) if cached else None
    if not args.data_dir:
        parser.error(f"no data: pass --data-dir, set {DATA_DIR_ENV}, or run `jaxlin download` first")
    try:
        load_idx_dir(args.data_dir)  # fail here, not in eight worker processes
    except DataError as err:
        parser.error(str(err))
    if args.accelerator_check:
        from bench import accelerator_check

        return accelerator_check.main(
            args.data_dir, args.out, quick=args.quick, tests=args.check_tests,
            budget_seconds=args.check_budget or accelerator_check.DEFAULT_BUDGET_SECONDS,
            command="python -m bench " + " ".join(argv if argv is not None else sys.argv[1:]))
    if args.contenders is None:
        args.contenders = ",".join(runner.STEADY_CONTENDERS if args.only else CONTENDERS)
    names = [n.strip() for n in args.contenders.split(",") if n.strip()]
    unknown = sorted(set(names) - set(CONTENDERS))
    if unknown:
        parser.error(f"unknown contenders: {', '.join(unknown)}")
    plan = runner.QUICK if args.quick else runner.FULL
    if args.repeats is not None:
        if args.repeats < 1:
            parser.error("--repeats must be at least 1")
        plan = runner.dataclasses.replace(plan, repeats=args.repeats)
    if args.cases:
        plan = runner.dataclasses.replace(plan, cases=_parse_cases(parser, args.cases))
    elif args.only:  # the plan's cases at the steady-state rows' models, batch 100
        steady_models = {model for model, _ in plan.steady_lengths}
        plan = runner.dataclasses.replace(plan, cases=[c for c in plan.cases
                                                       if c[0] in steady_models and c[1] == 100])
    if args.optimizer is not None or args.learning_rate is not None:
        plan = runner.dataclasses.replace(plan, optimizer=args.optimizer, learning_rate=args.learning_rate)
    try:
        check_optimizer(plan.optimizer, plan.learning_rate)
    except JaxlinError as err:
        parser.error(str(err))
    try:
        check_user_models(plan.cases)
    except JaxlinError as err:
        parser.error(f"--cases: {err}")
    try:
        check_cases_train(plan.cases, plan.optimizer, plan.learning_rate)
    except JaxlinError as err:
        parser.error(str(err))
    if args.no_sweep:
        plan = runner.dataclasses.replace(plan, sweep=[])
    if args.no_vmap:
        plan = runner.dataclasses.replace(plan, num_models=[])
    if args.no_parallel:
        plan = runner.dataclasses.replace(plan, device_counts=[])
    if args.no_tta:
        plan = runner.dataclasses.replace(plan, tta_repeats=0)
    if args.no_e2e:
        plan = runner.dataclasses.replace(plan, e2e_repeats=0)
    if args.steady_repeats is not None:
        if args.steady_repeats < 1:
            parser.error("--steady-repeats must be at least 1 (--no-steady-state skips them)")
        plan = runner.dataclasses.replace(plan, steady_repeats=args.steady_repeats)
    if args.no_steady_state:
        plan = runner.dataclasses.replace(plan, steady_repeats=0)
    if args.only:
        plan = runner.dataclasses.replace(plan, sweep=[], num_models=[], device_counts=[], tta_repeats=0,
                                          e2e_repeats=0, peak=False)

    untraced = [name for name in names if CONTENDERS[name][2] != "jax"]
    if profile is not None and untraced:
        print(f"python -m bench: note: --profile traces the JAX contenders only; not traced: {', '.join(untraced)}",
              file=sys.stderr, flush=True)
    results = runner.run(plan, args.data_dir, names, native_blas=not args.keep_blas_pin,
                         log=lambda m: print(m, file=sys.stderr, flush=True), profile=profile,
                         profile_dir=Path(args.out) / PROFILE_DIR)
    results["meta"]["command"] = "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:])
    results["meta"]["quick"] = args.quick
    results["targets"] = report.targets(results)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = device_slug(results) + ("-quick" if args.quick else "")
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    report.chart(results, out / f"{stem}.png")
    print(report.table(results))
    print("\ntargets:", json.dumps(results["targets"], indent=1))
    print(f"\nwrote {out / (stem + '.json')} and {out / (stem + '.png')}")
    for trace in (results.get("profile") or {}).get("traces", []):
        for line in trace.get("lines", []):  # written: where and how to open it; else why not
            if trace["status"] == "ok":
                print(line)
            else:
                print(f"python -m bench: note: {trace['case']}: {line}", file=sys.stderr)
    failed = report.failures(results)
    for line in failed:
        print(f"python -m bench: failed: {line}", file=sys.stderr)
    if failed:
        print(f"python -m bench: {len(failed)} requested measurement(s) failed (exit status 1); the rest is in "
              f"{out / (stem + '.json')}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
