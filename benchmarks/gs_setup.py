"""The configurations of `../shared/bench/common.py` as cfkeras models, and their float64 check.

`common.py` (NumPy only, outside this repository) fixes the benchmark's GS step
for every framework: models, weights, batches, a float64 NumPy reference of the
loss and a timing helper. This module imports it at run time from the shared
folder (it is never copied here) and maps its conventions to cfkeras:

* A batch of B pairs is its 2B rows `[x_i; x_j]`: cfkeras gets
  `{"original": rows[:B], "counterfactual": rows[B:]}` and concatenates them
  back to the same rows, so the partner of row r is `(r + B) mod 2B` in both.
* common's `g_r = d logit_c / dx_r` and `t_r = (y_p[c] - y_r[c]) (x_p - x_r)`:
  cfkeras's contrast `w = y_p - y_r` (class_selection="changed",
  multi_label_mode="sum") is non-zero only at the one label c that a pair
  flips, so its `g = w_c d logit_c / dx = sign g_r` and its target is
  `x_p - x_r`: `cos(sign g_r, x_p - x_r) = cos(g_r, t_r)` since sign = ±1.
  `both_directions=True` supervises all 2B rows; GS = mean over rows.
* common's cosine smooths the norms with EPS = 1e-12; cfkeras leaves
  degenerate points out instead (`min_relative_distance`): on these batches
  every row is supervised and the two differ by ~EPS / |g|^2 (`check` measures it).
* main loss: sigmoid BCE from logits, mean over all elements: the models end
  in a sigmoid and are compiled with "binary_crossentropy", as a user would;
  cfkeras takes the pre-activation logits for GS and Keras computes the
  cross-entropy from the same logits.
* M1/M3: an MLP with Keras `Dense` layers `dense_0 ...` (kernels `(in, out)`,
  set from `common.make_weights`), GS space = the inputs (`gs_layer=None`).
  M2: `cfkeras.models.bag_of_embeddings_classifier(20000, 50)`, GS space = its
  `MaskedMean` output "mean_embedding"; the target is not stop-gradiented
  (`stop_target_gradient=False`, the default).
* Adam(1e-3, epsilon=1e-7), λ = `common.LAM` = 1.
"""

import importlib
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SHARED = REPO.parent / "shared" / "bench"
MLP_KINDS = ("mlp_small", "mlp_big")


def load_common(shared=None):
    """Imports `common.py` from the shared benchmark folder (via `sys.path`)."""
    path = Path(shared or DEFAULT_SHARED).resolve()
    if not (path / "common.py").is_file():
        raise FileNotFoundError(f"{path}/common.py not found: pass --shared DIR")
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    common = importlib.import_module("common")
    if Path(common.__file__).resolve().parent != path:
        raise ImportError(f"`common` was imported from {common.__file__}, not from {path}")
    return common


# === Models ===


def keras_model(common, kind, sizes=None, embedding_dim=None):
    """The Keras model of a config, with Keras's default initialisation.

    Args:
        common: the shared `common` module.
        kind: "mlp_small", "mlp_big" or "bow".
        sizes: MLP layer sizes (default `common.MLP_SIZES[kind]`).
        embedding_dim: bag-of-embeddings width (default `common.EMB`).
    """
    import keras

    import cfkeras

    if kind == "bow":
        return cfkeras.models.bag_of_embeddings_classifier(
            common.VOCAB, embedding_dim or common.EMB, sequence_length=common.SEQ
        )
    sizes = sizes or common.MLP_SIZES[kind]
    inputs = keras.Input((sizes[0],), name="features")
    h = inputs
    for k, units in enumerate(sizes[1:]):
        last = k == len(sizes) - 2
        h = keras.layers.Dense(units, activation="sigmoid" if last else "relu", name=f"dense_{k}")(
            h
        )
    return keras.Model(inputs, h, name=kind)


def named_variables(model, kind):
    """`{common name: Keras variable}`: "W0", "b0", ... and "E" for the embedding."""
    if kind == "bow":
        output = model.get_layer("output")
        return {
            "E": model.get_layer("embedding").embeddings,
            "W0": output.kernel,
            "b0": output.bias,
        }
    named = {}
    for layer in model.layers[1:]:
        k = int(layer.name.split("_")[-1])
        named[f"W{k}"], named[f"b{k}"] = layer.kernel, layer.bias
    return named


def set_common_weights(model, kind, weights):
    for name, variable in named_variables(model, kind).items():
        variable.assign(weights[name].astype(variable.dtype))


def gs_model(common, model, kind, gs_weight=None):
    """`GradientSupervisionModel` with the benchmark's GS settings (see the module doc)."""
    import cfkeras

    return cfkeras.GradientSupervisionModel(
        model,
        gs_layer="mean_embedding" if kind == "bow" else None,
        gs_weight=common.LAM if gs_weight is None else gs_weight,
        class_selection="changed",
        multi_label_mode="sum",
        both_directions=True,
    )


def make_optimizer(common, name="adam"):
    import keras

    if name == "adam":
        return keras.optimizers.Adam(learning_rate=common.LR, epsilon=common.ADAM_EPS)
    if name == "adadelta":  # the paper's optimizer, cfkeras's (benchmarks/adadelta_update.py)
        import cfkeras

        return cfkeras.optimizers.Adadelta(learning_rate=1.0, rho=0.9, epsilon=1e-6)
    raise ValueError(f"unknown optimizer {name!r}")


def build(common, cfg, gs_weight=None, optimizer="adam", steps_per_execution=1, jit_compile="auto"):
    """Compiled `GradientSupervisionModel` of a config with `common.make_weights`."""
    kind, _ = common.CONFIGS[cfg]
    model = keras_model(common, kind)
    set_common_weights(model, kind, common.make_weights(kind))
    gs = gs_model(common, model, kind, gs_weight)
    gs.compile(
        optimizer=make_optimizer(common, optimizer),
        loss="binary_crossentropy",
        steps_per_execution=steps_per_execution,
        jit_compile=jit_compile,
    )
    return gs


# === Data ===


def pair_arrays(batch):
    """`(x, y)` pair dicts of NumPy arrays from a common batch (rows `[x_i; x_j]`)."""
    from cfkeras.pairs import make_pair

    half = len(batch["x"]) // 2
    x, y = batch["x"], batch["y"]
    return make_pair(x[:half], x[half:]), make_pair(y[:half], y[half:])


def pairs(batch):
    """The batch as `cfkeras.pairs.Pairs`, for `to_dataset` (pairs) or `flatten` (plain)."""
    from cfkeras.pairs import COUNTERFACTUAL, ORIGINAL, Pairs

    x, y = pair_arrays(batch)
    return Pairs(x[ORIGINAL], x[COUNTERFACTUAL], y[ORIGINAL], y[COUNTERFACTUAL])


# === Float64 check ===


def cfkeras_losses_and_gradients(gs, kind, batch):
    """GS model's main and GS losses and `d total / d params` (tape over `compute_pair_losses`)."""
    import tensorflow as tf

    x, y = pair_arrays(batch)
    named = named_variables(gs.model, kind)
    with tf.GradientTape() as tape:
        total, stats = gs.compute_pair_losses(x, y, training=True)
    gradients = tape.gradient(total, list(named.values()))
    gradients = {name: np.asarray(tf.convert_to_tensor(g)) for name, g in zip(named, gradients)}
    return {
        "total": float(total),
        "main": float(stats["main_loss"]),
        "gs": float(stats["gs_loss"][0]),
        "supervised": int(np.sum(stats["gs_supervised"])),
        "rows": len(batch["x"]),
        "gradients": gradients,
    }


def contrast_reduces_to_common(common, batch):
    """Whether cfkeras's contrast weights `y_p - y_r` equal common's `sign * onehot`."""
    from cfkeras.losses import contrast_weights

    y = batch["y"]
    half = len(y) // 2
    partner = np.concatenate([y[half:], y[:half]])
    w = np.asarray(contrast_weights(y, partner, y.shape[-1]))
    return bool(np.array_equal(w, batch["sign"] * batch["onehot"]))


def _relative(a, b):
    return abs(a - b) / max(abs(b), 1e-30)


def directional_errors(
    common, kind, weights, batch, gradients, seed=0, step=1e-5, directions=("own", "random")
):
    """Gradients against central differences of `common.numpy_losses` (float64).

    For each parameter tensor and unit directions `v` (`"own"`: the gradient's
    own direction; `"random"`): `|<g, v> - dL/dv|`, where `dL/dv` is a
    central difference of `main + LAM * GS` in float64. ReLU kinks make the GS
    loss jump (its input gradient depends on the ReLU pattern): a difference is
    accepted when the steps `h` and `h / 2` agree, else retried smaller.

    Returns:
        `{name: max absolute error over the directions}`; divide by the
        tensor's gradient norm, or by the whole gradient's, for a relative error.
    """
    rng = np.random.default_rng(seed)
    base = {name: w.astype(np.float64) for name, w in weights.items()}

    def central(name, v, h):
        plus = common.numpy_losses(kind, {**base, name: base[name] + h * v}, batch)
        minus = common.numpy_losses(kind, {**base, name: base[name] - h * v}, batch)
        return (plus[0] - minus[0] + common.LAM * (plus[1] - minus[1])) / (2 * h)

    errors = {}
    for name, g in gradients.items():
        g = g.astype(np.float64)
        norm = float(np.linalg.norm(g))
        if norm == 0.0:
            errors[name] = 0.0
            continue
        random = rng.standard_normal(g.shape)
        units = {"own": g / norm, "random": random / np.linalg.norm(random)}
        worst = 0.0
        for v in (units[d] for d in directions):
            h = step
            for _ in range(6):
                coarse, fine = central(name, v, h), central(name, v, h / 2)
                if abs(coarse - fine) <= 1e-5 * norm:
                    break
                h /= 8
            worst = max(worst, abs(float(np.sum(g * v)) - fine))
        errors[name] = worst
    return errors


def check(common, cfg, fd=True, fd_directions=("own", "random")):
    """cfkeras against the float64 reference on one config (weights before any update).

    Returns a dict: cfkeras's `main`, `gs` and `gradients`, the reference's
    `ref_main` and `ref_gs` and the relative errors `main_rel`, `gs_rel`;
    `eps_effect_rel`, how much common's EPS changes its GS (cfkeras has none);
    `contrast_ok` (cfkeras's contrast is common's `sign * onehot`),
    `supervised` of `rows`, `relu_ties` (see `relu_ties`); with `fd`, the
    gradients' errors against central differences of the reference,
    `grad_fd_tensor` (relative to each tensor's gradient norm) and
    `grad_fd_model` (relative to the whole gradient's norm).
    """
    kind, n_pairs = common.CONFIGS[cfg]
    weights = common.make_weights(kind)
    batch = common.make_batch(kind, n_pairs)
    gs = build(common, cfg)
    result = cfkeras_losses_and_gradients(gs, kind, batch)
    ref_main, ref_gs = common.numpy_losses(kind, weights, batch)
    eps = common.EPS
    try:
        common.EPS = 0.0
        ref_gs_no_eps = common.numpy_losses(kind, weights, batch)[1]
    finally:
        common.EPS = eps
    result.update(
        ref_main=ref_main,
        ref_gs=ref_gs,
        main_rel=_relative(result["main"], ref_main),
        gs_rel=_relative(result["gs"], ref_gs),
        eps_effect_rel=_relative(ref_gs_no_eps, ref_gs),
        contrast_ok=contrast_reduces_to_common(common, batch),
        relu_ties=relu_ties(gs.model, kind, weights, batch),
    )
    if fd:
        gradients = result["gradients"]
        errors = directional_errors(
            common, kind, weights, batch, gradients, directions=fd_directions
        )
        total_norm = float(
            np.sqrt(sum(np.sum(np.square(g, dtype=np.float64)) for g in gradients.values()))
        )
        result["grad_fd_tensor"] = {
            name: error / max(float(np.linalg.norm(gradients[name])), 1e-30)
            for name, error in errors.items()
        }
        result["grad_fd_model"] = {name: error / total_norm for name, error in errors.items()}
    return result


def relu_ties(model, kind, weights, batch):
    """Hidden ReLU units that are on in float64 and off in cfkeras's float32, or vice versa.

    The GS loss depends on the ReLU pattern (the input gradient does), so a
    pre-activation within float32 rounding of 0 switches whole gradient
    entries between frameworks that sum in different orders. Returns
    `[(layer, unit, row, float64 value, float32 value)]`: one entry per unit,
    at its row of smallest float64 magnitude among the rows that differ.
    """
    from keras import ops

    if kind not in MLP_KINDS:
        return []
    ties = []
    h64, h32 = batch["x"].astype(np.float64), ops.convert_to_tensor(batch["x"])
    n_layers = len([name for name in weights if name.startswith("W")])
    for k in range(n_layers - 1):
        layer = model.get_layer(f"dense_{k}")
        z64 = h64 @ weights[f"W{k}"].astype(np.float64) + weights[f"b{k}"].astype(np.float64)
        z32 = ops.add(ops.matmul(h32, layer.kernel), layer.bias)  # as Dense computes it
        z32_np = np.asarray(z32)
        differs = (z64 > 0) != (z32_np > 0)
        for unit in np.flatnonzero(differs.any(axis=0)):
            rows = np.flatnonzero(differs[:, unit])
            row = rows[np.argmin(np.abs(z64[rows, unit]))]
            ties.append((k, int(unit), int(row), float(z64[row, unit]), float(z32_np[row, unit])))
        h64, h32 = np.maximum(z64, 0.0), ops.relu(z32)
    return ties


def tie_mask(gradients, ties):
    """`{name: bool array}`: the gradient entries that a tied unit switches."""
    mask = {name: np.zeros(g.shape, bool) for name, g in gradients.items()}
    for layer, unit, *_ in ties:
        mask[f"W{layer}"][:, unit] = True
        mask[f"b{layer}"][unit] = True
        mask[f"W{layer + 1}"][unit, :] = True
    return mask


def compare_gradients(ours, theirs, exclude=None):
    """Gradient disagreement, per tensor and relative to the model's gradient scale.

    Args:
        ours, theirs: `{name: array}`.
        exclude: optional `{name: bool array}` of entries left out (`tie_mask`).

    Returns:
        `(per_tensor, per_model)`: `{name: max |a - b| / max |b|}` (relative to
        the tensor's own largest entry; large for a tensor whose gradient is a
        cancelling sum, such as M2's output bias) and `{name: max |a - b| /
        max over all tensors of max |b|}`.
    """
    names = [name for name in ours if name in theirs]
    scale = max(float(np.max(np.abs(theirs[name]))) for name in names)
    diff = {}
    for name in names:
        d = np.abs(ours[name] - theirs[name])
        if exclude is not None:
            d = np.where(exclude[name], 0.0, d)
        diff[name] = float(np.max(d))
    per_tensor = {
        name: diff[name] / max(float(np.max(np.abs(theirs[name]))), 1e-30) for name in names
    }
    return per_tensor, {name: diff[name] / max(scale, 1e-30) for name in names}
