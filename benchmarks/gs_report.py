"""The results of `gs_step.py` as summaries and Markdown (no measuring here).

`summarize` turns the per-repetition records of a run into medians over
repetitions, per-repetition ratios and the targets of issue 6; `markdown`
renders a whole report (`results/gs_step.md`) and `check_markdown` the
agreement check (`results/gs_check.md`), both from what is stored in their
JSON, so a committed `.md` can be rendered again from its `.json`; `write`
writes the pair.
"""

import json

import numpy as np

# Targets of issue 6: cfkeras GS step / fastest peer's GS step.
PEER_TARGET = {"M2_B32": 1.1, "M2_B512": 1.1, "M1_B256": 1.25, "M3_B512": 1.25}
FIT_OVERHEAD_TARGET = 1.05
ADADELTA_TARGET = 1.2
BUSY = 0.1  # cores used by other processes above which a window is not idle


# === Summary ===


def _spread(values):
    values = [v for v in values if v is not None and np.isfinite(v)]
    if not values:
        return None
    return {
        "median": float(np.median(values)),
        "p10": float(np.percentile(values, 10)),
        "p90": float(np.percentile(values, 90)),
        "n": len(values),
    }


def summarize(records, memory, cfgs):
    """Medians over repetitions of per-repetition figures and ratios, per config."""
    index = {(r["rep"], r["cfg"], r["framework"], r["variant"], r["mode"]): r for r in records}
    reps = sorted({r["rep"] for r in records})
    return {cfg: _summarize_cfg(cfg, index, reps, records, memory) for cfg in cfgs}


def _ratio(a, b):
    return a / b if a is not None and b else None


def _summarize_cfg(cfg, index, reps, records, memory):
    keys = sorted({(f, v, m) for (_, c, f, v, m) in index if c == cfg})
    peaks = {
        (m["framework"], m["variant"], m["mode"]): m["peak_mb"] for m in memory if m["cfg"] == cfg
    }
    steps = {}
    for framework, variant, mode in keys:
        runs = [index.get((rep, cfg, framework, variant, mode)) for rep in reps]
        runs = [r for r in runs if r]
        steps[f"{framework}/{variant}/{mode}"] = {
            "ms": _spread([r["median_ms"] for r in runs]),
            "first_call_s": _spread([r.get("first_call_s") for r in runs]),
            "other_cores_max": max(r.get("other_cores", 0.0) for r in runs),
            "in_call_ms": _spread([r.get("in_call_ms") for r in runs]),
            "fit_wall_per_step_ms": _spread([r.get("fit_wall_per_step_ms") for r in runs]),
            "fit_setup_ms": _spread([r.get("fit_setup_ms") for r in runs]),
            "peak_mb": peaks.get((framework, variant, mode)),
        }

    def ms(rep, framework, variant, mode):
        r = index.get((rep, cfg, framework, variant, mode))
        return r["median_ms"] if r else None

    def per_rep(a, b):
        """Spread over repetitions of ms(a) / ms(b); a, b = (framework, variant, mode)."""
        return _spread([_ratio(ms(rep, *a), ms(rep, *b)) for rep in reps])

    peers = sorted({(f, v) for f, v, _ in keys if f != "cfkeras"})
    fastest = {}
    for rep in reps:
        times = [(ms(rep, f, v, "gs"), f"{f}/{v}") for f, v in peers]
        times = [t for t in times if t[0] is not None]
        fastest[rep] = min(times) if times else (None, None)
    ratios = {}
    for variant in sorted({v for f, v, _ in keys if f == "cfkeras"}):
        ratios[f"cfkeras/{variant} GS / fastest peer GS"] = _spread(
            [_ratio(ms(rep, "cfkeras", variant, "gs"), fastest[rep][0]) for rep in reps]
        )
    for framework, variant in sorted({(f, v) for f, v, _ in keys}):
        ratios[f"{framework}/{variant} GS / plain"] = per_rep(
            (framework, variant, "gs"), (framework, variant, "plain")
        )
    for mode in ("gs", "plain"):
        raw = ("cfkeras", "raw", mode)
        ratios[f"cfkeras fit / raw ({mode})"] = per_rep(("cfkeras", "fit", mode), raw)
        ratios[f"cfkeras fit_spe8 / raw ({mode})"] = per_rep(("cfkeras", "fit_spe8", mode), raw)
        ratios[f"cfkeras Adadelta / Adam, fit ({mode})"] = per_rep(
            ("cfkeras", "fit_adadelta", mode), ("cfkeras", "fit", mode)
        )
    ratios["cfkeras gs_weight=0 / plain, fit"] = per_rep(
        ("cfkeras", "fit", "gs0"), ("cfkeras", "fit", "plain")
    )
    ratios = {k: v for k, v in ratios.items() if v is not None}
    return {
        "steps": steps,
        "fastest_peer_per_rep": [fastest[rep][1] for rep in reps],
        "ratios": ratios,
        "targets": _targets(cfg, ratios, peers),
        "busy_windows": sorted(
            f"rep {r['rep']} {r['framework']}/{r['variant']}/{r['mode']}: {r['other_cores']}"
            for r in records
            if r["cfg"] == cfg and r.get("other_cores", 0.0) > BUSY
        ),
    }


def _targets(cfg, ratios, peers):
    def median(key):
        return ratios[key]["median"] if key in ratios else None

    def target(value, limit):
        return {"value": value, "target": limit, "met": value <= limit}

    theirs = [median(f"{f}/{v} GS / plain") for f, v in peers]
    theirs = [t for t in theirs if t is not None]
    candidates = {
        "fit GS <= target x fastest peer": (
            median("cfkeras/fit GS / fastest peer GS"),
            PEER_TARGET[cfg],
        ),
        "GS/plain <= best peer's": (
            median("cfkeras/fit GS / plain"),
            min(theirs) if theirs else None,
        ),
        "fit / raw step": (median("cfkeras fit / raw (gs)"), FIT_OVERHEAD_TARGET),
        "Adadelta / Adam under XLA": (
            median("cfkeras Adadelta / Adam, fit (gs)"),
            ADADELTA_TARGET,
        ),
    }
    return {
        name: target(value, limit)
        for name, (value, limit) in candidates.items()
        if value is not None and limit is not None
    }


# === Markdown ===


def _fmt(spread, digits=2):
    if not spread:
        return "-"
    return f"{spread['median']:.{digits}f} ({spread['p10']:.{digits}f}-{spread['p90']:.{digits}f})"


def markdown(report):
    """`results/gs_step.md` of a report (as stored in its JSON)."""
    lines = [
        "# GS step: cfkeras vs JAX and PyTorch",
        "",
        f"Command: `{report['command']}`  ",
        f"Date: {report['date']}; commit {report['git']['commit'][:12]}"
        + (" (uncommitted changes)" if report["git"]["dirty"] else ""),
        "",
        "Machine: " + ", ".join(f"{k}={v}" for k, v in report["machine"].items() if v is not None),
        "",
        "Frameworks: "
        + "; ".join(
            json.dumps(h) if h and "line" not in h else (h or {}).get("line", "?")
            for h in report["frameworks"].values()
        ),
        "",
        f"Protocol: {report['protocol']['reps']} repetitions, {report['protocol']['threads']} "
        "threads, frameworks interleaved (fresh subprocess per repetition and config, order "
        "rotated); figures are the median over repetitions (p10-p90 across repetitions); "
        "ratios are medians of per-repetition ratios. Peak memory: max RSS of a fresh "
        "subprocess minus its RSS after importing the framework.",
        "",
    ]
    if report["smoke"]:
        lines += ["**Smoke run (3 timed steps): the numbers are not measurements.**", ""]
    for cfg, s in report["summary"].items():
        lines += [
            f"## {cfg}",
            "",
            "| framework/variant | GS ms | plain ms | GS/plain | first call s (GS) "
            "| peak MB GS / plain | other cores (max) |",
            "|---|---|---|---|---|---|---|",
        ]
        names = sorted({k.rsplit("/", 1)[0] for k in s["steps"]})
        for name in names:
            gs = s["steps"].get(f"{name}/gs", {})
            plain = s["steps"].get(f"{name}/plain", {})
            ratio = s["ratios"].get(f"{name} GS / plain")
            peaks = [gs.get("peak_mb"), plain.get("peak_mb")]
            peak = " / ".join("-" if p is None else f"{p:.0f}" for p in peaks)
            busy = max(gs.get("other_cores_max", 0.0), plain.get("other_cores_max", 0.0))
            lines.append(
                f"| {name} | {_fmt(gs.get('ms'))} | {_fmt(plain.get('ms'))} | {_fmt(ratio)} "
                f"| {_fmt(gs.get('first_call_s'))} | {peak} | {busy:.2f} |"
            )
        lines += ["", "| ratio | median (p10-p90) |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v, 3)} |" for k, v in s["ratios"].items()]
        lines += ["", "| target | value | target | met |", "|---|---|---|---|"]
        lines += [
            f"| {k} | {t['value']:.3f} | {t['target']:.3f} | {'yes' if t['met'] else '**no**'} |"
            for k, t in s["targets"].items()
        ]
        fits = {k: v for k, v in s["steps"].items() if k.startswith("cfkeras/fit")}
        if fits:
            lines += [
                "",
                "| cfkeras fit | step ms | in train_function ms | fit wall / step ms "
                "| fit setup ms |",
                "|---|---|---|---|---|",
            ]
            lines += [
                f"| {k[len('cfkeras/') :]} | {_fmt(v['ms'])} | {_fmt(v['in_call_ms'])} "
                f"| {_fmt(v['fit_wall_per_step_ms'])} | {_fmt(v['fit_setup_ms'], 1)} |"
                for k, v in fits.items()
            ]
        if s["busy_windows"]:
            lines += ["", f"Not idle (other processes > {BUSY} core): rerun these."]
            lines += [f"- {w}" for w in s["busy_windows"]]
        lines.append("")
    if report.get("notes"):
        lines += ["## Notes", "", report["notes"].strip(), ""]
    return "\n".join(lines)


def check_table(results):
    """The agreement table of `--check`; `results`: the report's entries by config."""
    lines = [
        "## cfkeras GS step vs the float64 NumPy reference and the peers",
        "",
        "Relative errors (weights before any update). Loss: |a - b| / |b|. Gradients vs "
        "NumPy: |<g, v> - central difference of main + LAM * GS along v| over unit "
        "directions v (the gradient's own and a random one), divided by the norm of the "
        "whole gradient. Gradients vs a peer: max |a - b| over a tensor divided by the "
        "largest |gradient entry| of the model, leaving out the entries of ReLU ties "
        "(hidden units whose pre-activation on some row is within float32 rounding of 0 "
        "and on different sides in cfkeras's float32 and in float64: the GS loss depends "
        "on the ReLU pattern, so such a unit switches its whole gradient column); "
        "with them in brackets, then the worst tensor relative to its own largest entry.",
        "",
        "| cfg | GS loss cfkeras / NumPy | main vs NumPy | GS vs NumPy | common's EPS effect "
        "| grads vs NumPy | vs torch: GS, grads (with ties) [worst tensor] "
        "| vs jax: GS, grads (with ties) [worst tensor] | supervised rows | ReLU ties |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cfg, r in results.items():
        fd = r["errors"].get("grads vs NumPy (central differences)")
        cells = []
        for framework in ("torch", "jax"):
            peer = r.get(framework)
            if peer is None:
                cells.append("-")
                continue
            name, worst = max(peer["grad_per_tensor"].items(), key=lambda kv: kv[1])
            cells.append(
                f"{peer['gs_rel']:.1e}, {max(peer['grad_per_model'].values()):.1e} "
                f"({peer['grad_per_model_with_ties']:.1e}) [{name}: {worst:.1e}]"
            )
        ties = "; ".join(
            f"layer {k} unit {u} row {row}: {z64:+.1e} (float64) vs {z32:+.1e}"
            for k, u, row, z64, z32 in r["relu_ties"]
        )
        lines.append(
            f"| {cfg} | {r['gs']:.7f} / {r['ref_gs']:.7f} | {r['main_rel']:.1e} "
            f"| {r['gs_rel']:.1e} | {r['eps_effect_rel']:.1e} "
            f"| {'-' if fd is None else f'{fd:.1e}'} | {cells[0]} | {cells[1]} "
            f"| {r['supervised']}/{r['rows']} | {ties or 'none'} |"
        )
    return "\n".join(lines)


def check_markdown(report):
    """`results/gs_check.md`: the command, then `check_table`."""
    return f"Command: `{report['command']}`\n\n{check_table(report['results'])}\n"


# === Files ===


def write(stem, report, text):
    """Writes `report` to `stem.json` and its Markdown `text` to `stem.md`."""
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    stem.with_suffix(".md").write_text(text)
