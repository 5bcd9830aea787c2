"""Turns a results dict into the stdout table, the Markdown tables of docs/benchmark.md, the target ratios and a
PNG chart."""

from __future__ import annotations

from pathlib import Path

from jaxlin.config import MODELS

LABELS = {
    "tf_reference": "TF reference (v1 graph, feed_dict)",
    "tf2_function": "TF2 tf.function loop",
    "tf2_xla": "TF2 tf.function loop, XLA",
    "torch_eager": "PyTorch eager",
    "jaxlin_per_step": "jaxlin per-step",
    "jaxlin_fused": "jaxlin fused",
    "jaxlin_vmap": "jaxlin vmap",
    "jaxlin_sweep": "jaxlin sweep",
    "jaxlin_data_parallel": "jaxlin data parallel",
    "numpy_floor": "NumPy/BLAS floor",
}


MANY_MODELS = ("jaxlin_vmap", "jaxlin_sweep")


def _main_rows(results: dict) -> list[dict]:
    return [r for r in results["throughput"] if r.get("status") == "ok" and not r.get("sweep")
            and r["contender"] not in (*MANY_MODELS, "jaxlin_data_parallel")]


def _not_run_rows(results: dict) -> list[dict]:
    """Throughput rows of contenders that do not build a case's model (the TF reference and the floor: no CNN)."""
    return [r for r in results["throughput"] if r.get("status") == "skipped"]


def _tta_rows(results: dict) -> list[dict]:
    return [r for r in results.get("time_to_accuracy", []) if r.get("status", "ok") == "ok"]


def _many_rows(results: dict, contender: str) -> dict[int, dict]:
    return {r["num_models"]: r for r in results["throughput"]
            if r["contender"] == contender and r.get("status") == "ok"}


def _peak(results: dict) -> float | None:
    return (results.get("peak") or {}).get("peak_gflops")


def best_fused(results: dict) -> dict | None:
    rows = [r for r in results["throughput"] if r.get("sweep") and r.get("status") == "ok"]
    return min(rows, key=lambda r: r["median_us_per_step"]) if rows else None


def targets(results: dict) -> dict:
    """The issue's targets at linear, batch 100, as ratios measured in one run."""
    case = {r["contender"]: r for r in _main_rows(results) if r["model"] == "linear" and r["batch_size"] == 100}
    fused = best_fused(results) or case.get("jaxlin_fused")
    if not fused:
        return steady_state_targets(results)
    us = fused["median_us_per_step"]
    out = {"jaxlin_fused_us_per_step": us, "jaxlin_fused_variant": fused["variant"]}
    checks = {"tf_reference": ("speedup_vs_tf_reference", 6.0), "torch_eager": ("speedup_vs_torch_eager", 4.0)}
    for name, (key, goal) in checks.items():
        if name in case:
            ratio = case[name]["median_us_per_step"] / us
            out[key] = {"ratio": ratio, "goal": goal, "met": ratio >= goal}
    tf2 = [case[n]["median_us_per_step"] for n in ("tf2_function", "tf2_xla") if n in case]
    if tf2:
        ratio = min(tf2) / us
        out["speedup_vs_best_tf2"] = {"ratio": ratio, "goal": 3.0, "met": ratio >= 3.0}
    if "numpy_floor" in case:
        ratio = us / case["numpy_floor"]["median_us_per_step"]
        out["time_vs_numpy_floor"] = {"ratio": ratio, "goal": 1.5, "met": ratio <= 1.5}
    out.update(_peak_targets(results, fused))
    out.update(_end_to_end_targets(results))
    out.update(steady_state_targets(results))
    tta = {r["contender"]: r["median_wall_seconds"] for r in _tta_rows(results)}
    ours = {k: v for k, v in tta.items() if k.startswith("jaxlin")}
    others = {k: v for k, v in tta.items() if not k.startswith("jaxlin")}
    if ours and others:
        best_ours, best_other = min(ours, key=ours.get), min(others, key=others.get)
        out["time_to_accuracy"] = {"fastest_jaxlin": best_ours, "fastest_jaxlin_seconds": ours[best_ours],
                                   "fastest_other": best_other, "fastest_other_seconds": others[best_other],
                                   "met": ours[best_ours] < others[best_other]}
    return out


def _peak_targets(results: dict, fused: dict) -> dict:
    """Issue 9's targets: sweeps against one fused model and against the machine's measured peak."""
    out = {}
    sweep = _many_rows(results, "jaxlin_sweep")
    if 64 in sweep:
        ratio = sweep[64]["model_steps_per_second"] / fused["model_steps_per_second"]
        out["sweep_m64_vs_single_fused"] = {"ratio": ratio, "goal": 3.0, "met": ratio >= 3.0}
    if _peak(results):
        large = [r["fraction_of_peak"] for m, r in sweep.items() if m >= 64 and r.get("fraction_of_peak")]
        if large:
            out["sweep_fraction_of_peak_at_m_ge_64"] = {"min": min(large), "goal": 0.7, "met": min(large) >= 0.7}
        if fused.get("fraction_of_peak") is not None:
            fraction = fused["fraction_of_peak"]
            out["single_fused_fraction_of_peak"] = {"fraction": fraction, "goal": 0.4, "met": fraction >= 0.4}
    return out


E2E_GOALS = {"jaxlin_train_warm": 0.35, "jaxlin_train_no_figures_warm": 0.25, "jaxlin_train_cold": 0.6}
E2E_LABELS = {"tf_reference_script": "TF tutorial script", "torch_script": "PyTorch tutorial script",
              "jaxlin_train_cold": "jaxlin train, cold (empty caches)", "jaxlin_train_warm": "jaxlin train, warm",
              "jaxlin_train_no_figures_warm": "jaxlin train --no-figures, warm", "jaxlin_help": "jaxlin --help"}


def _end_to_end_targets(results: dict) -> dict:
    """Issue 10's targets: whole-process wall time as a fraction of the TF tutorial script's."""
    rows = {r["name"]: r for r in results.get("end_to_end", []) if r.get("status") == "ok"}
    out = {}
    for name, goal in E2E_GOALS.items():
        if name in rows and rows[name].get("ratio_to_tf_reference") is not None:
            ratio = rows[name]["ratio_to_tf_reference"]
            out[f"end_to_end_{name}"] = {"ratio_to_tf_reference": ratio, "goal": goal, "met": ratio <= goal}
    if "jaxlin_help" in rows:
        seconds = rows["jaxlin_help"]["median_seconds"]
        out["jaxlin_help_seconds"] = {"seconds": seconds, "goal": 0.3, "met": seconds <= 0.3}
    return out


# Issue 17: default `jaxlin train`'s steady state against the bare loop, by the rank of the run length among
# a model's long lengths (the full plan: 21,000 then 100,000 steps; the quick plan's shorter ones), for the
# models whose run lengths it set (the CNN's runs are a few dozen steps: no goal), and against the TF
# reference (linear).
STEADY_VS_BARE_GOALS = (1.25, 1.1)
STEADY_VS_BARE_MODELS = ("linear", "mlp")
STEADY_VS_TF_GOAL = 4.0
# Issue 18: `jaxlin train --model cnn` at least as fast per step as PyTorch eager's CNN at batch 100.
STEADY_VS_TORCH_GOALS = {"cnn": 1.0}


def _steady_rows(results: dict) -> list[dict]:
    return [r for r in (results.get("train_steady_state") or {}).get("rows", []) if r.get("status") == "ok"]


def _steady_goals(results: dict) -> list[tuple[dict, float | None]]:
    """Each measured steady-state row with its default/bare goal (None beyond the goals' lengths)."""
    out, rank = [], {}
    for row in _steady_rows(results):
        index = rank[row["model"]] = rank.get(row["model"], -1) + 1
        goal = STEADY_VS_BARE_GOALS[index] if index < len(STEADY_VS_BARE_GOALS) else None
        out.append((row, goal if row["model"] in STEADY_VS_BARE_MODELS else None))
    return out


def steady_state_targets(results: dict) -> dict:
    """Issue 17's targets: default `jaxlin train` per step (long minus short whole-process run) at most 1.25x
    the bare loop's at the first long length (21,000 steps), 1.1x at the second (100,000), and for the linear
    model at least 4x faster per step than the TF reference; issue 18's: the CNN at least as fast per step as
    PyTorch eager's (its throughput row at batch 100); keys name the model and the length."""
    out = {}
    for row, goal in _steady_goals(results):
        model, steps = row["model"], row["num_steps"]
        if row.get("default_vs_bare") is not None and goal is not None:
            out[f"train_steady_state_{model}_{steps}_default_vs_bare"] = {
                "ratio": row["default_vs_bare"], "goal": goal, "met": row["default_vs_bare"] <= goal}
        if model == "linear" and row.get("speedup_vs_tf_reference") is not None:
            ratio = row["speedup_vs_tf_reference"]
            out[f"train_steady_state_{model}_{steps}_speedup_vs_tf_reference"] = {
                "ratio": ratio, "goal": STEADY_VS_TF_GOAL, "met": ratio >= STEADY_VS_TF_GOAL}
        if model in STEADY_VS_TORCH_GOALS and row.get("speedup_vs_torch_eager") is not None:
            ratio, goal = row["speedup_vs_torch_eager"], STEADY_VS_TORCH_GOALS[model]
            out[f"train_steady_state_{model}_{steps}_speedup_vs_torch_eager"] = {
                "ratio": ratio, "goal": goal, "met": ratio >= goal}
    return out


def one_line(text: str, limit: int = 300) -> str:
    """A failure's reason on one line: its first non-empty line, cut at `limit` characters."""
    line = next((part.strip() for part in str(text).splitlines() if part.strip()), "")
    return line if len(line) <= limit else line[:limit - 3] + "..."


def failures(results: dict) -> list[str]:
    """One line per requested measurement that did not run to the end: a contender that failed to start, a
    throughput row (contender, case, reason), a time-to-accuracy or an end-to-end run. Skipped contenders
    (not installed, sitting out another optimizer or model) are not failures."""
    lines = [f"{name}: failed to start: {one_line(c.get('reason', ''))}"
             for name, c in results.get("contenders", {}).items() if c.get("status") == "failed"]
    for r in results.get("throughput", []):
        if r.get("status") == "failed":
            case = f"{r.get('model')}, batch {r.get('batch_size')}, {r.get('num_steps')} steps"
            extra = f" ({r['variant']})" if r.get("sweep") or "devices" in r or "num_models" in r else ""
            lines.append(f"{r['contender']}, {case}{extra}: {one_line(r.get('reason', ''))}")
    lines += [f"{r['contender']}, time to accuracy: {one_line(r.get('reason', ''))}"
              for r in results.get("time_to_accuracy", []) if r.get("status") == "failed"]
    lines += [f"end to end {r['name']}: {one_line(r.get('reason', '') or 'no timed run')}"
              for r in results.get("end_to_end", []) if r.get("status") == "failed"]
    lines += [f"train steady state {r['model']} {r['mode']} {r['num_steps']} steps: "
              f"{one_line(r.get('reason', '') or 'no timed run')}"
              for r in (results.get("train_steady_state") or {}).get("runs", []) if r.get("status") == "failed"]
    lines += [f"{t['contender']}, {t['case']}, profile: {one_line(t.get('reason', ''))}"
              for t in (results.get("profile") or {}).get("traces", []) if t.get("status") == "failed"]
    return lines


def _case_order(case: tuple[str, int]) -> tuple[int, int]:
    model, batch_size = case
    return (MODELS.index(model) if model in MODELS else len(MODELS), batch_size)


def table(results: dict) -> str:
    """The console table: every case in full, then the fused sweep, data parallel, many models, time to
    accuracy, the contenders and end to end."""
    rows = _main_rows(results)
    lines = _optimizer_lines(results) + _peak_lines(results)
    for case in _cases(rows):
        lines += _case_table(rows, case, _not_run_rows(results))
    lines += _sweep_lines(results) + _parallel_lines(results) + _many_lines(results)
    lines += _tta_lines(results) + _contender_lines(results) + _e2e_lines(results) + _steady_lines(results)
    return "\n".join(lines + _profile_lines(results))


def _profile_lines(results: dict) -> list[str]:
    """What --profile traced, and that the timings above are not of traced runs."""
    profile = results.get("profile")
    if not profile:
        return []
    traced = sum(t["status"] == "ok" for t in profile["traces"])
    flag = "--profile" if profile["steps"] == "auto" else f"--profile {profile['steps']}"
    return ["", f"Profiled ({flag}): {traced} trace(s) under {profile['directory']}, each of "
            "one more run of a JAX row after all the timed repeats, set up again; no timing above was taken while "
            "a trace ran."]


def markdown(results: dict) -> str:
    """The generated part of docs/benchmark.md: each model's main case (batch 100, else its first) in full,
    with GFLOP/s and % of peak, every case's step time in one table, then the fused sweep, many models, data
    parallel, time to accuracy, end to end and the contenders. Captions are paragraphs, tables are Markdown;
    ends with a newline."""
    rows = _main_rows(results)
    cases = _cases(rows)
    lines = _optimizer_lines(results) + _peak_lines(results)
    for case in _main_cases(cases):
        lines += _case_table(rows, case, _not_run_rows(results))
    lines += _all_cases_lines(rows, cases)
    lines += _sweep_lines(results) + _many_lines(results) + _parallel_lines(results)
    lines += _tta_lines(results) + _e2e_lines(results) + _steady_lines(results) + _contender_lines(results)
    return "\n".join(lines).strip("\n") + "\n"


def _cases(rows: list[dict]) -> list[tuple[str, int]]:
    return sorted({(r["model"], r["batch_size"]) for r in rows}, key=_case_order)


def _main_cases(cases: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """One case per model: at batch 100 (the tutorial's) when timed, else the model's first."""
    models = list(dict.fromkeys(model for model, _ in cases))
    return [(m, 100) if (m, 100) in cases else next(c for c in cases if c[0] == m) for m in models]


def _optimizer_lines(results: dict) -> list[str]:
    """A line naming the jaxlin contenders' optimizer when it is not the tutorial's SGD (`--optimizer`)."""
    plan = results.get("meta", {}).get("plan", {})
    if plan.get("optimizer") is None and plan.get("learning_rate") is None:
        return []
    rate = plan.get("learning_rate")
    return [f"\noptimizer: {plan.get('optimizer') or 'sgd'}, learning rate "
            f"{rate if rate is not None else 'the default (0.5 for linear, 0.1 for the others)'} "
            f"(the jaxlin contenders; the others train only the tutorial's SGD and sit out)"]


def _peak_lines(results: dict) -> list[str]:
    peak = results.get("peak") or {}
    if not peak.get("peak_gflops"):
        return []
    sources = ", ".join(f"{k} {v['gflops']:.1f}" for k, v in peak["by_source"].items() if "gflops" in v)
    size = next(v["size"] for v in peak["by_source"].values() if "size" in v)
    return [f"\nmeasured peak: {peak['peak_gflops']:.1f} GFLOP/s (float32 {size}x{size} matmul, best of "
            f"several: {sources} GFLOP/s); FLOPs per step from XLA's cost analysis of jaxlin's update"]


def _case_table(rows: list[dict], case: tuple[str, int], not_run: list[dict] = ()) -> list[str]:
    model, batch_size = case
    case_rows = [r for r in rows if (r["model"], r["batch_size"]) == case]
    floor = next((r["median_us_per_step"] for r in case_rows if r["contender"] == "numpy_floor"), None)
    ref = next((r["median_us_per_step"] for r in case_rows if r["contender"] == "tf_reference"), None)
    lines = [f"\n{model}, batch {batch_size}, {case_rows[0]['num_steps']} steps, "
             f"median of {len(case_rows[0]['repeats_seconds'])} (min-max)\n",
             "| contender | us/step | min-max | steps/s | examples/s | x TF ref | x floor time | GFLOP/s | "
             "% peak | compile s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in sorted(case_rows, key=lambda r: r["median_us_per_step"]):
        us = r["median_us_per_step"]
        lines.append(
            f"| {LABELS[r['contender']]} | {us:,.1f} | {r['min_us_per_step']:,.0f}-{r['max_us_per_step']:,.0f} | "
            f"{r['steps_per_second']:,.0f} | {r['examples_per_second']:,.0f} | "
            f"{f'{ref / us:.2f}' if ref else '-'} | {f'{us / floor:.2f}' if floor else '-'} | "
            f"{_gflops(r)} | {_percent_of_peak(r)} | {r.get('compile_seconds', 0):.2f} |")
    skipped = {r["contender"]: r["reason"] for r in not_run if (r["model"], r["batch_size"]) == case}
    if skipped:
        lines.append("\nnot run: " + "; ".join(f"{LABELS[name]} ({reason})" for name, reason in skipped.items()))
    return lines


def _all_cases_lines(rows: list[dict], cases: list[tuple[str, int]]) -> list[str]:
    """One table of every throughput case: the median step time, with the fraction of peak."""
    if not cases:
        return []
    by_case = {case: {r["contender"]: r for r in rows if (r["model"], r["batch_size"]) == case} for case in cases}
    names = [n for n in LABELS if any(n in found for found in by_case.values())]
    steps = [next(iter(by_case[case].values()))["num_steps"] for case in cases]
    repeats = len(rows[0]["repeats_seconds"])
    lines = [f"\nevery case: us/step, median of {repeats} (in parentheses: % of the measured peak)\n",
             "| contender | " + " | ".join(f"{m}, batch {b}" for m, b in cases) + " |",
             "| --- |" + " ---: |" * len(cases),
             "| *steps timed* | " + " | ".join(f"*{n:,}*" for n in steps) + " |"]
    for name in names:
        cells = []
        for case in cases:
            r = by_case[case].get(name)
            percent = _percent_of_peak(r) if r else "-"
            cells.append("-" if r is None else f"{r['median_us_per_step']:,.1f}"
                         + ("" if percent == "-" else f" ({percent})"))
        lines.append(f"| {LABELS[name]} | " + " | ".join(cells) + " |")
    return lines


def _gflops(row: dict) -> str:
    return f"{row['gflops']:.1f}" if row.get("gflops") is not None else "-"


def _percent_of_peak(row: dict) -> str:
    return f"{row['fraction_of_peak']:.0%}" if row.get("fraction_of_peak") is not None else "-"


def _sweep_lines(results: dict) -> list[str]:
    sweep = [r for r in results["throughput"] if r.get("sweep") and r.get("status") == "ok"]
    if not sweep:
        return []
    return ["\njaxlin fused sweep (linear, batch 100): steps per call K and scan unroll\n",
            "| variant | us/step | min-max |", "| --- | ---: | ---: |"] + [
        f"| {r['variant']} | {r['median_us_per_step']:.1f} | "
        f"{r['min_us_per_step']:.0f}-{r['max_us_per_step']:.0f} |" for r in sweep]


def _parallel_lines(results: dict) -> list[str]:
    parallel = [r for r in results["throughput"]
                if r["contender"] == "jaxlin_data_parallel" and r.get("status") == "ok"]
    if not parallel:
        return []
    kind = results["contenders"].get("jaxlin_data_parallel", {}).get("info", {}).get("device_kind", "")
    one = next((r["median_us_per_step"] for r in parallel if r["devices"] == 1), None)
    lines = [f"\njaxlin data parallel (linear, batch 100 split over the devices; {kind})\n",
             "| devices | us/step | steps/s | examples/s | speed-up | scaling efficiency |",
             "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in parallel:
        speedup = one / r["median_us_per_step"] if one else float("nan")
        lines.append(f"| {r['devices']} | {r['median_us_per_step']:,.1f} | {r['steps_per_second']:,.0f} | "
                     f"{r['examples_per_second']:,.0f} | {speedup:.2f} | {speedup / r['devices']:.0%} |")
    return lines


def _many_lines(results: dict) -> list[str]:
    vmap, sweep = _many_rows(results, "jaxlin_vmap"), _many_rows(results, "jaxlin_sweep")
    if not (vmap or sweep):
        return []
    lines = ["\njaxlin, M linear models at once (batch 100): each with its own batch order (vmap), or "
             "sharing one (sweep: one wide matmul)\n",
             "| models | vmap us/step (all M) | vmap model-steps/s | vmap % peak | sweep us/step (all M) | "
             "sweep model-steps/s | sweep % peak |", "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for m in sorted(set(vmap) | set(sweep)):
        cells = []
        for row in (vmap.get(m), sweep.get(m)):
            cells += ([f"{row['median_us_per_step']:,.1f}", f"{row['model_steps_per_second']:,.0f}",
                       _percent_of_peak(row)] if row else ["-", "-", "-"])
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


def _tta_lines(results: dict) -> list[str]:
    tta = _tta_rows(results)
    if not tta:
        return []
    target = results["meta"]["plan"]["tta_target"]
    return [f"\ntime to {target:.1%} test accuracy from process start (same batch order for all)\n",
            "| contender | median s | min-max | steps |", "| --- | ---: | ---: | ---: |"] + [
        f"| {LABELS[r['contender']]} | {r['median_wall_seconds']:.2f} | {r['min_wall_seconds']:.2f}-"
        f"{r['max_wall_seconds']:.2f} | {r['steps']}{'' if r['reached'] else ' (not reached)'} |"
        for r in sorted(tta, key=lambda r: r["median_wall_seconds"])]


def _contender_lines(results: dict) -> list[str]:
    lines = ["\ncontenders: status, framework version and the worker process's peak memory\n",
             "| contender | status | version | max RSS MB |", "| --- | --- | --- | ---: |"]
    for name, c in results["contenders"].items():
        version = c.get("info", {}).get("version", "")
        rss = f"{c['max_rss_mb']:.0f}" if "max_rss_mb" in c else ""
        reason = (": " + c["reason"]).replace("|", "\\|").replace("\n", " ") if c.get("reason") else ""
        lines.append(f"| {LABELS[name]} | {c['status']}{reason} | {version} | {rss} |")
    return lines


def _e2e_lines(results: dict) -> list[str]:
    e2e = [r for r in results.get("end_to_end", []) if r.get("status") == "ok"]
    if not e2e:
        return []
    return ["\nend to end: the tutorial run as a whole process, imports included (median of "
            f"{len(e2e[0]['seconds'])} interleaved runs)\n",
            "| command | median s | min-max | x TF script |", "| --- | ---: | ---: | ---: |"] + [
        f"| {E2E_LABELS.get(r['name'], r['name'])} | {r['median_seconds']:.2f} | "
        + (f"{r['min_seconds']:.2f}-{r['max_seconds']:.2f} | {r['ratio_to_tf_reference']:.2f} |"
           if r.get("ratio_to_tf_reference") is not None else "- | - |") for r in e2e]


def _ratio(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "-"


def _us(value: float | None) -> str:
    return f"{value:,.1f}" if value is not None else "-"


def _steady_lines(results: dict) -> list[str]:
    """Default `jaxlin train` against the bare loop, per model and run length, beside the TF reference and
    the fused loop of the throughput rows."""
    section = results.get("train_steady_state") or {}
    rows = _steady_rows(results)
    if not rows:
        return []
    flags = section.get("flags", {})
    models = ", ".join(f"{m}: {' '.join(f) or 'the defaults'}" for m, f in flags.items())
    lines = [f"\njaxlin train, steady state per step: whole processes, (long run - short run) / step difference, "
             f"medians of {section.get('repeats')} interleaved rounds; default = only --num-steps, --output-dir, "
             f"--no-progress, --no-figures; bare = the same with --eval-every <steps> --checkpoint-every 0 "
             f"(flags per model: {models}); TF reference, PyTorch eager, the faster TF2 loop and fused: the throughput "
             f"rows at batch 100 (ratios above 1: jaxlin train is faster per step)\n",
             "| model | steps (minus) | default us/step | bare us/step | default / bare | goal | "
             "TF ref us/step | TF ref / default | PyTorch us/step | PyTorch / default | best TF2 / default | "
             "fused us/step | default / fused |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r, goal in _steady_goals(results):
        lines.append(f"| {r['model']} | {r['num_steps']:,} ({r['short_steps']:,}) | {_us(r['default_us_per_step'])} | "
                     f"{_us(r['bare_us_per_step'])} | {_ratio(r.get('default_vs_bare'))} | "
                     f"{f'<= {goal}' if goal else '-'} | {_us(r.get('tf_reference_us_per_step'))} | "
                     f"{_ratio(r.get('speedup_vs_tf_reference'))} | {_us(r.get('torch_eager_us_per_step'))} | "
                     f"{_ratio(r.get('speedup_vs_torch_eager'))} | {_ratio(r.get('speedup_vs_best_tf2'))} | "
                     f"{_us(r.get('jaxlin_fused_us_per_step'))} | {_ratio(r.get('default_vs_jaxlin_fused'))} |")
    return lines


def _bars(ax, labels, values, colors, unit: str) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.barh(range(len(values)), values, color=colors)
    ax.set_yticks(range(len(values)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, max(values) * 1.3)
    for i, value in enumerate(values):
        ax.text(value, i, f" {value:,.0f}" if value >= 100 else f" {value:.3g}", va="center", fontsize=7)
    ax.set_xlabel(unit, fontsize=7)
    ax.tick_params(axis="x", labelsize=7)
    ax.xaxis.set_major_locator(MaxNLocator(4))


def _color(name: str) -> str:
    return "tab:green" if name.startswith("jaxlin") else "tab:gray" if name == "numpy_floor" else "tab:orange"


def chart(results: dict, path: Path) -> None:
    """One panel per (model, batch size) with the median step time, and one for time to accuracy."""
    from matplotlib.figure import Figure

    rows = _main_rows(results)
    cases = sorted({(r["model"], r["batch_size"]) for r in rows}, key=_case_order)
    tta = sorted(_tta_rows(results), key=lambda r: r["median_wall_seconds"])
    many = {name: _many_rows(results, name) for name in MANY_MODELS}
    many = {name: rows for name, rows in many.items() if rows}
    e2e = sorted((r for r in results.get("end_to_end", []) if r.get("status") == "ok"),
                 key=lambda r: r["median_seconds"])
    steady = _steady_bars(results)
    panels = len(cases) + (1 if tta else 0) + (1 if many else 0) + (1 if e2e else 0) + (1 if steady else 0)
    if not panels:  # nothing was timed (every row failed or was skipped): a chart that says so
        fig = Figure(figsize=(6, 2))
        fig.text(0.5, 0.5, "no timings to draw: every requested case failed or was skipped\n"
                 "(see the failures printed by python -m bench and the results JSON)", ha="center", va="center")
        fig.savefig(path, dpi=80)
        return
    columns = min(panels, 4)
    fig = Figure(figsize=(4.2 * columns, 3.2 * ((panels + columns - 1) // columns)))
    axes = fig.subplots((panels + columns - 1) // columns, columns, squeeze=False).ravel()
    for ax, (model, batch_size) in zip(axes, cases):
        case = sorted((r for r in rows if (r["model"], r["batch_size"]) == (model, batch_size)),
                      key=lambda r: r["median_us_per_step"])
        _bars(ax, [LABELS[r["contender"]] for r in case], [r["median_us_per_step"] for r in case],
              [_color(r["contender"]) for r in case], "µs per step, median (lower is better)")
        ax.set_title(f"{model}, batch {batch_size}", fontsize=9)
    if tta:
        ax = axes[len(cases)]
        _bars(ax, [LABELS[r["contender"]] for r in tta], [r["median_wall_seconds"] for r in tta],
              [_color(r["contender"]) for r in tta], "seconds from process start, median")
        ax.set_title(f"time to {results['meta']['plan']['tta_target']:.1%} test accuracy", fontsize=9)
    if many:
        _many_models_panel(axes[len(cases) + (1 if tta else 0)], many, results)
    if e2e:
        ax = axes[len(cases) + (1 if tta else 0) + (1 if many else 0)]
        _bars(ax, [E2E_LABELS.get(r["name"], r["name"]) for r in e2e], [r["median_seconds"] for r in e2e],
              [_color(r["name"]) for r in e2e], "seconds, whole process, median")
        ax.set_title("the tutorial run end to end (imports included)", fontsize=9)
    if steady:
        ax = axes[panels - 1]
        _bars(ax, [label for label, _, _ in steady], [value for _, value, _ in steady],
              [color for _, _, color in steady], "µs per step, steady state (lower is better)")
        ax.set_title("jaxlin train, whole process: defaults vs the bare loop", fontsize=9)
    for ax in axes[panels:]:
        ax.axis("off")
    fig.suptitle(f"jaxlin vs TensorFlow, PyTorch and a NumPy floor on {results['meta']['cpu_model']} "
                 f"({results['meta']['cpu_count']} cores)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def _steady_bars(results: dict) -> list[tuple[str, float, str]]:
    """(label, µs/step, colour) of the steady-state panel: per model, the TF reference and the fused loop,
    then default and bare `jaxlin train` at each length; a difference that came out negative or zero (noise
    in a short run) is left out of the chart, not of the table."""
    bars, seen = [], set()
    for r in _steady_rows(results):
        if r["model"] not in seen:
            seen.add(r["model"])
            for key, label, color in (("tf_reference_us_per_step", "TF reference", "tab:orange"),
                                      ("torch_eager_us_per_step", "PyTorch eager", "tab:orange"),
                                      ("jaxlin_fused_us_per_step", "jaxlin fused loop", "tab:green")):
                if r.get(key):
                    bars.append((f"{r['model']}: {label}", r[key], color))
        for mode, color in (("default", "tab:green"), ("bare", "tab:olive")):
            bars.append((f"{r['model']}: train {mode}, {r['num_steps']:,}", r[f"{mode}_us_per_step"], color))
    return [bar for bar in bars if bar[1] > 0]


def _many_models_panel(ax, many: dict[str, dict[int, dict]], results: dict) -> None:
    """model-steps/s against the number of models; the dashed line is the measured peak's equivalent."""
    for name, rows in many.items():
        counts = sorted(rows)
        ax.plot(counts, [rows[m]["model_steps_per_second"] for m in counts], marker="o", label=LABELS[name])
    flops = next((r.get("flops_per_step") for rows in many.values() for r in rows.values()
                  if r.get("flops_per_step")), None)
    if _peak(results) and flops:
        ax.axhline(_peak(results) * 1e9 / flops, linestyle="--", color="tab:gray", label="measured matmul peak")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("models trained at once (linear, batch 100)", fontsize=7)
    ax.set_ylabel("model-steps/s", fontsize=7)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7)
    ax.set_title("many models in one program", fontsize=9)
