"""`python -m bench`: measure jaxlin's training loop against TensorFlow, PyTorch and a NumPy floor.

Writes bench/results/<device>.json (every raw repeat) and <device>.png, and prints a table.
`--quick` runs a few steps of each contender to prove the harness works; its timings mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from bench import report, runner
from bench.worker import CONTENDERS
from jaxlin.config import MODELS
from jaxlin.data.datasets import DATA_DIR_ENV, DataError, load_idx_dir


def device_slug(results: dict) -> str:
    for name in ("jaxlin_fused", "jaxlin_per_step", "jaxlin_vmap"):
        kind = results["contenders"].get(name, {}).get("info", {}).get("device_kind")
        if kind:
            return kind.lower().replace(" ", "-")
    return "cpu"


def _parse_cases(parser, text: str) -> list[tuple[str, int, int]]:
    cases = []
    for item in text.split(","):
        try:
            model, batch_size, num_steps = item.split(":")
            case = (model, int(batch_size), int(num_steps))
        except ValueError:
            parser.error(f"--cases: expected MODEL:BATCH:STEPS, got {item!r}")
        if model not in MODELS or case[1] < 1 or case[2] < 1:
            parser.error(f"--cases: bad case {item!r} (model {', '.join(MODELS)}; batch and steps >= 1)")
        cases.append(case)
    return cases


def replot(path: Path) -> int:
    """Redraws a saved run's chart and table; the derived targets are recomputed, the raw data kept."""
    results = json.loads(path.read_text())
    results["targets"] = report.targets(results)
    path.write_text(json.dumps(results, indent=1) + "\n")
    report.chart(results, path.with_suffix(".png"))
    print(report.table(results))
    print("\ntargets:", json.dumps(results["targets"], indent=1))
    print(f"\nwrote {path.with_suffix('.png')}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few steps of everything (a smoke test)")
    parser.add_argument("--data-dir", default=os.environ.get(DATA_DIR_ENV),
                        help=f"MNIST IDX directory (default: ${DATA_DIR_ENV})")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"), help="default: %(default)s")
    parser.add_argument("--contenders", default=",".join(CONTENDERS),
                        help="comma-separated subset of: " + ", ".join(CONTENDERS))
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per case (default: 5, quick 2)")
    parser.add_argument("--cases", default=None, metavar="MODEL:BATCH:STEPS,...",
                        help="throughput cases instead of the plan's, e.g. linear:100:1000,mlp:1000:100")
    parser.add_argument("--no-sweep", action="store_true", help="skip the fused-loop K/unroll sweep")
    parser.add_argument("--no-vmap", action="store_true", help="skip the many-models vmap runs")
    parser.add_argument("--no-tta", action="store_true", help="skip the time-to-accuracy runs")
    parser.add_argument("--no-e2e", action="store_true", help="skip the end-to-end (whole process) runs")
    parser.add_argument("--replot", metavar="RESULTS_JSON",
                        help="only redraw the table and chart of a saved results file")
    parser.add_argument("--keep-blas-pin", action="store_true",
                        help="keep OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE for the NumPy floor too")
    args = parser.parse_args(argv)
    if args.replot:
        return replot(Path(args.replot))
    if not args.data_dir:
        parser.error(f"no data: pass --data-dir or set {DATA_DIR_ENV}")
    try:
        load_idx_dir(args.data_dir)  # fail here, not in eight worker processes
    except DataError as err:
        parser.error(str(err))
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
    if args.no_sweep:
        plan = runner.dataclasses.replace(plan, sweep=[])
    if args.no_vmap:
        plan = runner.dataclasses.replace(plan, num_models=[])
    if args.no_tta:
        plan = runner.dataclasses.replace(plan, tta_repeats=0)
    if args.no_e2e:
        plan = runner.dataclasses.replace(plan, e2e_repeats=0)

    results = runner.run(plan, args.data_dir, names, native_blas=not args.keep_blas_pin,
                         log=lambda m: print(m, file=sys.stderr, flush=True))
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
