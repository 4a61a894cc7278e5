"""cfkeras's gradient-supervision step raced against JAX and PyTorch (issue 6).

Times, on the models, weights and batches of `../shared/bench/common.py`
(M1_B256, M2_B32, M2_B512, M3_B512; the mapping is in `gs_setup.py`):

* cfkeras variants, each in `gs` mode (gradient supervision) and `plain` mode:
  - `fit`: `model.fit` on `Pairs.to_dataset(...)` exactly as a user runs it,
    `steps_per_execution=1` (the headline: the peers run one step per call);
  - `fit_spe8`: the same with `steps_per_execution=8` (fused steps);
  - `raw`: `tf.function(model.train_step, jit_compile=True)` on a batch of
    tensors, no data pipeline: the compiled step alone;
  - `fit_adadelta`: `fit` with the paper's Adadelta (`cfkeras.optimizers.Adadelta`) instead of Adam.
  `plain` is the same `GradientSupervisionModel` fed the 2B rows `[x_i; x_j]`
  unpaired (`Pairs.flatten`), cfkeras's main-loss-only path: no GS tape, same
  dense gradients. (`gs0`, paired data with `gs_weight=0`, is a diagnostic mode:
  it still computes the GS term.)
* the peers, `bench_torch.py` (eager, eager_fused, compile) and `bench_jax.py`
  (jit), each run as is, in its own virtual environment, as subprocesses.

Protocol: every framework runs in a fresh subprocess per (repetition, config);
frameworks are interleaved, their order rotated every repetition; each run
reports the median ms per step after warm-up and how many cores other
processes used meanwhile (`common.time_steps`/`summarize`). The report gives
the median over repetitions of per-repetition ratios with p10-p90, first-call
(compile) time, and peak memory = max RSS of a fresh subprocess minus its RSS
once the framework is imported (`/proc/self/status`, peak reset before the
model and data are built).

Usage (from the repository root, on an idle machine):

    python benchmarks/gs_step.py --check              # agreement, exits 1 on a mismatch
    python benchmarks/gs_step.py --reps 5             # timings -> benchmarks/results/gs_step.*
    python benchmarks/gs_step.py --setup-peers ../venvs   # the peers' virtual environments

See benchmarks/README.md.
"""

import argparse
import ast
import contextlib
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import gs_setup  # noqa: E402
from process_memory import reset_peak_rss, status_kb  # noqa: E402

REPO = gs_setup.REPO
CONFIGS = ("M1_B256", "M2_B32", "M2_B512", "M3_B512")
CFKERAS_VARIANTS = ("fit", "fit_spe8", "raw", "fit_adadelta")
PEER_VARIANTS = {"torch": ("eager", "eager_fused", "compile"), "jax": ("jit",)}
PEER_SCRIPTS = {"torch": "bench_torch.py", "jax": "bench_jax.py"}
MODES = ("gs", "plain", "gs0")
# Peak memory is measured for these cfkeras variants and every timed peer variant.
CFKERAS_MEMORY_VARIANTS = ("fit", "raw")
TOLERANCE = 1e-4
# Targets of issue 6: cfkeras GS step / fastest peer's GS step.
PEER_TARGET = {"M2_B32": 1.1, "M2_B512": 1.1, "M1_B256": 1.25, "M3_B512": 1.25}
FIT_OVERHEAD_TARGET = 1.05
ADADELTA_TARGET = 1.2
BUSY = 0.1  # cores used by other processes above which a window is not idle


# === Worker: cfkeras in this process ===


def _configure_threads(threads):
    cpus = sorted(os.sched_getaffinity(0))
    if threads < len(cpus):  # as bench_jax.py: XLA:CPU ignores the thread setting
        os.sched_setaffinity(0, set(cpus[:threads]))
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    return f"intra={threads},inter=default,affinity={sorted(os.sched_getaffinity(0))}"


def _profiler(profile_dir):
    if profile_dir is None:
        return contextlib.nullcontext()
    import tensorflow as tf

    return tf.profiler.experimental.Profile(profile_dir)


def _variant_model(common, cfg, mode, variant):
    kind, n_pairs = common.CONFIGS[cfg]
    batch = common.make_batch(kind, n_pairs)
    gs = gs_setup.build(
        common,
        cfg,
        gs_weight=0.0 if mode == "gs0" else None,
        optimizer="adadelta" if variant == "fit_adadelta" else "adam",
        steps_per_execution=8 if variant == "fit_spe8" else 1,
    )
    return gs, batch


def _dataset(batch, mode):
    pairs = gs_setup.pairs(batch)
    n_pairs = len(pairs)
    if mode == "plain":
        return pairs.flatten(batch_size=2 * n_pairs, seed=0).repeat()
    return pairs.to_dataset(batch_size=n_pairs, seed=0).repeat()


def time_fit(common, gs, cfg, dataset, warmup, profile_dir=None):
    """`fit` timings: per-step wall time between consecutive `train_function` returns."""
    spe = gs.steps_per_execution
    start = time.perf_counter()
    gs.fit(dataset, steps_per_epoch=spe, verbose=0)
    first = time.perf_counter() - start
    gs.fit(dataset, steps_per_epoch=warmup * spe, verbose=0)
    n_exec = common.n_exec_spe(cfg, spe)
    function, returns, in_call = gs.train_function, [], []

    def timed(iterator):
        begin = time.perf_counter()
        outputs = function(iterator)
        end = time.perf_counter()
        in_call.append(end - begin)
        returns.append(end)
        return outputs

    gs.train_function = timed  # `fit` reuses an existing train_function
    try:
        with _profiler(profile_dir):
            marks = common._cpu_marks()
            start = time.perf_counter()
            gs.fit(dataset, steps_per_epoch=n_exec * spe, verbose=0)
            wall = time.perf_counter() - start
            common.cpu_window(marks, common._cpu_marks())
    finally:
        gs.train_function = function
    stats = common.summarize(list(np.diff(returns) / spe))
    stats.update(
        first_call_s=first,
        in_call_ms=1e3 * float(np.median(in_call)) / spe,
        fit_wall_per_step_ms=1e3 * wall / (n_exec * spe),
        fit_setup_ms=1e3 * (returns[0] - in_call[0] - start),
        steps_per_execution=spe,
    )
    return stats


def _tensors(batch, mode):
    import tensorflow as tf

    if mode == "plain":
        return tf.constant(batch["x"]), tf.constant(batch["y"])
    x, y = gs_setup.pair_arrays(batch)
    return (
        {key: tf.constant(value) for key, value in x.items()},
        {key: tf.constant(value) for key, value in y.items()},
    )


def time_raw(common, gs, cfg, batch, mode, warmup, profile_dir=None):
    """The compiled step alone: `tf.function(train_step, jit_compile=True)` on tensors."""
    import tensorflow as tf

    data = _tensors(batch, mode)
    gs.optimizer.build(gs.trainable_variables)
    step = tf.function(gs.train_step, jit_compile=True)
    sync = lambda logs: logs["loss"].numpy()
    start = time.perf_counter()
    sync(step(data))
    first = time.perf_counter() - start
    with _profiler(profile_dir):
        times = common.time_steps(lambda: step(data), common.n_steps_for(cfg), warmup, sync=sync)
    stats = common.summarize(times)
    stats.update(first_call_s=first, traces=step.experimental_get_tracing_count())
    return stats


def _run_variant(common, cfg, mode, variant, warmup, profile_dir=None):
    gs, batch = _variant_model(common, cfg, mode, variant)
    if variant == "raw":
        return time_raw(common, gs, cfg, batch, mode, warmup, profile_dir)
    return time_fit(common, gs, cfg, _dataset(batch, mode), warmup, profile_dir)


def worker(args):
    import warnings

    import keras
    import tensorflow as tf

    import cfkeras

    # Keras warns that fit's default shuffle=True does not apply to a tf.data.Dataset.
    warnings.filterwarnings("ignore", message="`shuffle=True` was passed")
    threads = _configure_threads(args.threads)
    common = gs_setup.load_common(args.shared)
    if args.smoke:  # a few steps: proves the code path, measures nothing
        common.n_steps_for = lambda cfg: 3
    warmup = 1 if args.smoke else 10
    devices = [d.name for d in tf.config.list_physical_devices() if d.device_type != "CPU"]
    header = {
        "framework": "cfkeras",
        "cfkeras": cfkeras.__version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "threads": threads,
        "accelerators": devices,
    }
    print("HEADER " + json.dumps(header), flush=True)
    for cfg in args.cfg:
        for mode in args.modes:
            for variant in args.variants:
                if args.memory:
                    baseline = status_kb("VmRSS")
                    reset = reset_peak_rss()
                    _run_variant(common, cfg, mode, variant, warmup=1)
                    record = {
                        "framework": "cfkeras",
                        "variant": variant,
                        "cfg": cfg,
                        "mode": mode,
                        "peak_mb": (status_kb("VmHWM") - baseline) / 1024,
                        "baseline_mb": baseline / 1024,
                        "peak_reset": reset,
                    }
                    print("MEMORY " + json.dumps(record), flush=True)
                    continue
                stats = _run_variant(common, cfg, mode, variant, warmup, args.profile_dir)
                stats["threads"] = threads
                common.save_result("cfkeras", variant, cfg, mode, stats)


# === Orchestrator ===


def _default_python(framework):
    env = os.environ.get(f"GS_{framework.upper()}_PYTHON")
    return env or str(REPO.parent / "venvs" / framework / "bin" / "python")


def _peer_available(python, framework):
    if not Path(python).is_file():
        return False, f"{python} not found"
    module = "torch" if framework == "torch" else "jax"
    result = subprocess.run(
        [python, "-c", f"import {module}"], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        return False, result.stderr.strip().splitlines()[-1:]
    return True, ""


def _run(command, out_dir, log):
    """Runs a subprocess with GS_BENCH_OUT=out_dir; returns (rc, stdout lines)."""
    env = dict(os.environ, GS_BENCH_OUT=str(out_dir), TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    log.write(f"$ {' '.join(command)}\n{result.stdout}\n{result.stderr[-4000:]}\n")
    log.flush()
    if result.returncode != 0:
        tail = result.stderr.strip().splitlines()[-3:]
        print(f"  ! exit {result.returncode}: {' | '.join(tail)}", flush=True)
    return result.returncode, result.stdout.splitlines()


def _records(out_dir):
    path = Path(out_dir) / "results.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _timing_command(args, framework, cfg, pythons):
    if framework == "cfkeras":
        command = [sys.executable, str(HERE / "gs_step.py"), "--worker", "--cfg", cfg]
        command += ["--variants", *args.variants, "--modes", *args.modes]
        command += ["--threads", str(args.threads), "--shared", str(args.shared)]
        return command + (["--smoke"] if args.smoke else [])
    command = [pythons[framework], str(Path(args.shared) / PEER_SCRIPTS[framework])]
    command += ["--cfg", cfg, "--threads", str(args.threads)]
    if framework == "torch":
        command += ["--variants", *args.torch_variants]
    return command


def _memory_command(args, framework, cfg, variant, mode, pythons):
    if framework == "cfkeras":
        command = [sys.executable, str(HERE / "gs_step.py"), "--worker", "--memory"]
        command += ["--cfg", cfg, "--variants", variant, "--modes", mode]
        return command + ["--threads", str(args.threads), "--shared", str(args.shared)]
    command = [pythons[framework], str(HERE / "peer_memory.py"), "--framework", framework]
    command += ["--shared", str(args.shared), "--cfg", cfg, "--variant", variant]
    return command + ["--mode", mode, "--threads", str(args.threads)]


def _header(lines, framework):
    for line in lines:
        if line.startswith("HEADER "):
            return json.loads(line[len("HEADER ") :])
        if framework != "cfkeras" and line.startswith(framework + " "):
            return {"framework": framework, "line": line}
    return None


def _machine():
    info = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        total = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
        info["memory_gb"] = round(int(total) / 2**20, 1)
    info["OPENBLAS_CORETYPE"] = os.environ.get("OPENBLAS_CORETYPE")
    return info


def _git():
    def git(*command):
        result = subprocess.run(
            ["git", "-C", str(REPO), *command], capture_output=True, text=True, check=False
        )
        return result.stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}


def run_benchmark(args):
    pythons = {"torch": args.torch_python, "jax": args.jax_python}
    frameworks = []
    for framework in args.frameworks:
        if framework == "cfkeras":
            frameworks.append(framework)
            continue
        ok, why = _peer_available(pythons[framework], framework)
        if ok:
            frameworks.append(framework)
        else:
            print(f"[skip] {framework}: {why} (see --setup-peers)", flush=True)
    if not frameworks:
        raise SystemExit("no framework to run")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="gs_step_"))
    log = open(scratch / "subprocesses.log", "w")  # noqa: SIM115
    print(f"subprocess log: {log.name}", flush=True)
    records, headers = [], {}
    for rep in range(args.reps):
        order = frameworks[rep % len(frameworks) :] + frameworks[: rep % len(frameworks)]
        for cfg in args.cfg:
            for framework in order:
                run_dir = scratch / f"rep{rep}_{framework}_{cfg}"
                print(f"[rep {rep}] {cfg} {framework}", flush=True)
                rc, lines = _run(_timing_command(args, framework, cfg, pythons), run_dir, log)
                headers.setdefault(framework, _header(lines, framework))
                for record in _records(run_dir):
                    record.update(rep=rep, framework=framework)
                    records.append(record)
    memory = []
    if args.memory:
        for cfg in args.cfg:
            for framework in frameworks:
                variants = {
                    "cfkeras": [v for v in CFKERAS_MEMORY_VARIANTS if v in args.variants],
                    "torch": args.torch_variants,
                    "jax": PEER_VARIANTS["jax"],
                }[framework]
                for variant in variants:
                    for mode in ("gs", "plain"):
                        print(f"[memory] {cfg} {framework}/{variant} {mode}", flush=True)
                        command = _memory_command(args, framework, cfg, variant, mode, pythons)
                        _, lines = _run(command, scratch / "memory", log)
                        for line in lines:
                            if line.startswith("MEMORY "):
                                memory.append(json.loads(line[len("MEMORY ") :]))
    log.close()
    report = {
        "command": "python " + " ".join([os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": _machine(),
        "git": _git(),
        "frameworks": headers,
        "smoke": args.smoke,
        "protocol": {
            "reps": args.reps,
            "threads": args.threads,
            "interleaving": "per repetition and config, framework order rotated each repetition",
            "busy_threshold_cores": BUSY,
        },
        "notes": Path(args.notes).read_text() if args.notes else None,
        "runs": records,
        "memory": memory,
        "summary": summarize(records, memory, args.cfg),
    }
    stem = out_dir / args.name
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    stem.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    print(f"wrote {stem}.json and {stem}.md", flush=True)


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


def _fmt(spread, digits=2):
    if not spread:
        return "-"
    return f"{spread['median']:.{digits}f} ({spread['p10']:.{digits}f}-{spread['p90']:.{digits}f})"


def markdown(report):
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


# === Check ===


def run_check(args):
    """cfkeras vs the NumPy float64 reference and the peers' --check dumps."""
    out = Path(os.environ.get("GS_BENCH_OUT") or tempfile.mkdtemp(prefix="gs_check_"))
    out.mkdir(parents=True, exist_ok=True)
    pythons = {"torch": args.torch_python, "jax": args.jax_python}
    if not args.no_peers:
        log = open(out / "peer_check.log", "w")  # noqa: SIM115
        for framework in ("torch", "jax"):
            ok, why = _peer_available(pythons[framework], framework)
            if not ok:
                print(f"[skip] {framework} --check: {why}", flush=True)
                continue
            command = [pythons[framework], str(Path(args.shared) / PEER_SCRIPTS[framework])]
            command += ["--check", "--threads", str(args.threads), "--cfg", *args.cfg]
            _run(command, out, log)
        log.close()
    os.environ["GS_BENCH_OUT"] = str(out)
    _configure_threads(args.threads)
    common = gs_setup.load_common(args.shared)
    rows, failures, results = [], [], {}
    for cfg in args.cfg:
        r = gs_setup.check(common, cfg, fd=not args.no_fd)
        common.save_check("cfkeras", cfg, r["main"], r["gs"], r["gradients"])
        entry = {k: v for k, v in r.items() if k != "gradients"}
        errors = {"main loss vs NumPy": r["main_rel"], "GS loss vs NumPy": r["gs_rel"]}
        if "grad_fd_model" in r:
            errors["grads vs NumPy (central differences)"] = max(r["grad_fd_model"].values())
        for framework in ("torch", "jax"):
            path = out / f"check_{framework}_{cfg}.npz"
            if not path.is_file():
                continue
            dump = dict(np.load(path))
            theirs = {k[len("grad_") :]: v for k, v in dump.items() if k.startswith("grad_")}
            # Entries switched by a ReLU tie (a pre-activation within float32
            # rounding of 0, on different sides here and in float64) are left
            # out of the pass/fail figure and reported apart.
            ties = gs_setup.tie_mask(r["gradients"], r["relu_ties"])
            per_tensor, per_model = gs_setup.compare_gradients(r["gradients"], theirs, ties)
            _, with_ties = gs_setup.compare_gradients(r["gradients"], theirs)
            peer = {
                "main_rel": abs(r["main"] - float(dump["main"])) / abs(float(dump["main"])),
                "gs_rel": abs(r["gs"] - float(dump["gs"])) / abs(float(dump["gs"])),
                "grad_per_tensor": per_tensor,
                "grad_per_model": per_model,
                "grad_per_model_with_ties": max(with_ties.values()),
            }
            entry[framework] = peer
            errors[f"GS loss vs {framework}"] = peer["gs_rel"]
            errors[f"grads vs {framework}"] = max(per_model.values())
        bad = [k for k, v in errors.items() if not v <= TOLERANCE]
        if not r["contrast_ok"]:
            bad.append("contrast weights != sign * onehot")
        if r["supervised"] != r["rows"]:
            bad.append(f"{r['rows'] - r['supervised']} rows not supervised")
        failures += [f"{cfg}: {b}" for b in bad]
        entry["errors"] = errors
        results[cfg] = entry
        rows.append((cfg, r, errors, entry))
    text = _check_markdown(rows, args)
    print(text)
    if args.out_dir:
        Path(args.out_dir).mkdir(parents=True, exist_ok=True)
        stem = Path(args.out_dir) / "gs_check"
        command = "python " + " ".join([os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])
        report = {
            "command": command,
            "machine": _machine(),
            "git": _git(),
            "tolerance": TOLERANCE,
            "results": results,
        }
        stem.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
        stem.with_suffix(".md").write_text(f"Command: `{command}`\n\n{text}\n")
    if failures:
        print("DISAGREEMENT:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    print(f"all agree to {TOLERANCE:g} relative", flush=True)
    return 0


def _check_markdown(rows, args):
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
    for cfg, r, errors, entry in rows:
        fd = errors.get("grads vs NumPy (central differences)")
        cells = []
        for framework in ("torch", "jax"):
            peer = entry.get(framework)
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


# === Peer environments ===


def bench_requirements():
    """The `bench` extra of setup.py, read without running setup.py."""
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "extras_require":
            return ast.literal_eval(node.value)["bench"]
    raise KeyError("setup.py has no `bench` extra")


def setup_peers(root):
    """Creates `root/torch` and `root/jax`, each with the `bench` extra's pins for it."""
    requirements = bench_requirements()
    groups = {
        "torch": [r for r in requirements if re.match(r"torch\b", r)],
        "jax": [r for r in requirements if re.match(r"(jax|jaxlib|optax)\b", r)],
    }
    for framework, packages in groups.items():
        venv = Path(root) / framework
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install"]
        subprocess.run([*pip, *packages, "numpy"], check=True)
        print(f"{framework}: {venv / 'bin' / 'python'} ({' '.join(packages)} numpy)", flush=True)


# === Command line ===


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="agreement check, no timing")
    parser.add_argument("--setup-peers", metavar="ROOT", help="create the peers' venvs in ROOT")
    parser.add_argument("--cfg", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--frameworks",
        nargs="+",
        default=["cfkeras", "torch", "jax"],
        choices=("cfkeras", "torch", "jax"),
    )
    parser.add_argument(
        "--variants", nargs="+", default=list(CFKERAS_VARIANTS), choices=CFKERAS_VARIANTS
    )
    parser.add_argument("--modes", nargs="+", default=["gs", "plain"], choices=MODES)
    parser.add_argument(
        "--torch-variants",
        nargs="+",
        default=list(PEER_VARIANTS["torch"]),
        choices=PEER_VARIANTS["torch"],
    )
    parser.add_argument("--shared", default=str(gs_setup.DEFAULT_SHARED), help="../shared/bench")
    parser.add_argument("--torch-python", default=_default_python("torch"))
    parser.add_argument("--jax-python", default=_default_python("jax"))
    parser.add_argument("--out-dir", default=str(HERE / "results"))
    parser.add_argument("--name", default="gs_step", help="results file stem")
    parser.add_argument("--no-memory", dest="memory", action="store_false")
    parser.add_argument("--notes", help="a text file (e.g. profiling findings) for the report")
    parser.add_argument("--no-peers", action="store_true", help="--check: skip the peers")
    parser.add_argument("--no-fd", action="store_true", help="--check: no central differences")
    parser.add_argument("--smoke", action="store_true", help="3 timed steps: a dry run")
    parser.add_argument(
        "--profile-dir", help="worker: TensorFlow profiler trace of the timed steps"
    )
    parser.add_argument(
        "--worker", action="store_true", help="cfkeras only, in this process (e.g. to profile)"
    )
    parser.add_argument(
        "--memory", action="store_true", dest="memory_probe", help=argparse.SUPPRESS
    )
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.setup_peers:
        setup_peers(args.setup_peers)
        return 0
    if args.worker:
        args.memory = args.memory_probe
        worker(args)
        return 0
    if args.check:
        return run_check(args)
    run_benchmark(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
