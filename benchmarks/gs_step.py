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
model and data are built). This script measures and orchestrates; `gs_report.py`
summarizes and renders the results.

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

import gs_report  # noqa: E402
import gs_setup  # noqa: E402
from process_memory import print_peak, reset_peak_rss, status_kb  # noqa: E402

REPO = gs_setup.REPO
CONFIGS = ("M1_B256", "M2_B32", "M2_B512", "M3_B512")
CFKERAS_VARIANTS = ("fit", "fit_spe8", "raw", "fit_adadelta")
PEER_VARIANTS = {"torch": ("eager", "eager_fused", "compile"), "jax": ("jit",)}
PEER_SCRIPTS = {"torch": "bench_torch.py", "jax": "bench_jax.py"}
MODES = ("gs", "plain", "gs0")
# Peak memory is measured for these cfkeras variants and every timed peer variant.
CFKERAS_MEMORY_VARIANTS = ("fit", "raw")
TOLERANCE = 1e-4


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
                    print_peak(
                        baseline, reset, framework="cfkeras", variant=variant, cfg=cfg, mode=mode
                    )
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


def _worker_command(args, *options):
    """This script as a cfkeras worker: `--worker`, `options`, threads and shared folder."""
    command = [sys.executable, str(HERE / "gs_step.py"), "--worker", *options]
    return command + ["--threads", str(args.threads), "--shared", str(args.shared)]


def _timing_command(args, framework, cfg, pythons):
    if framework == "cfkeras":
        options = ["--cfg", cfg, "--variants", *args.variants, "--modes", *args.modes]
        return _worker_command(args, *options) + (["--smoke"] if args.smoke else [])
    command = [pythons[framework], str(Path(args.shared) / PEER_SCRIPTS[framework])]
    command += ["--cfg", cfg, "--threads", str(args.threads)]
    if framework == "torch":
        command += ["--variants", *args.torch_variants]
    return command


def _memory_command(args, framework, cfg, variant, mode, pythons):
    if framework == "cfkeras":
        options = ["--cfg", cfg, "--variants", variant, "--modes", mode]
        return _worker_command(args, "--memory", *options)
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


def _command_line():
    """This run's command, relative to the repository root (for the report)."""
    return "python " + " ".join([os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])


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
        "command": _command_line(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": _machine(),
        "git": _git(),
        "frameworks": headers,
        "smoke": args.smoke,
        "protocol": {
            "reps": args.reps,
            "threads": args.threads,
            "interleaving": "per repetition and config, framework order rotated each repetition",
            "busy_threshold_cores": gs_report.BUSY,
        },
        "notes": Path(args.notes).read_text() if args.notes else None,
        "runs": records,
        "memory": memory,
        "summary": gs_report.summarize(records, memory, args.cfg),
    }
    stem = out_dir / args.name
    text = gs_report.markdown(report)
    gs_report.write(stem, report, text)
    print(text)
    print(f"wrote {stem}.json and {stem}.md", flush=True)


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
    failures, results = [], {}
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
    print(gs_report.check_table(results))
    if args.out_dir:
        Path(args.out_dir).mkdir(parents=True, exist_ok=True)
        report = {
            "command": _command_line(),
            "machine": _machine(),
            "git": _git(),
            "tolerance": TOLERANCE,
            "results": results,
        }
        gs_report.write(Path(args.out_dir) / "gs_check", report, gs_report.check_markdown(report))
    if failures:
        print("DISAGREEMENT:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    print(f"all agree to {TOLERANCE:g} relative", flush=True)
    return 0


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
