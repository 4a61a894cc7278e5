"""The math of the gradient-supervision loss (Teney, Abbasnejad & van den Hengel, ECCV 2020).

The sign convention of cfkeras lives in this file and only here:

* `contrast_weights` says which logits must change for a pair and in which
  direction;
* `cosine_alignment` compares the input gradient of that contrast with the
  vector from an example to its counterfactual; the per-example GS loss is
  `1 - cos` where the cosine is defined (0 elsewhere).

Both are pure per-example functions (as in keras's and optax's losses). The
GS term itself, which needs the model's input gradient and so cannot be a
`keras.losses.Loss` of `(y_true, y_pred)`, is
`cfkeras.models.GradientSupervisionModel.gradient_supervision_term`, built
on these two.
"""

import keras
from keras import ops

# Squared gradient norms at or below this are treated as a zero gradient (dead
# ReLUs, a zero-initialised head): the cosine is undefined there.
_MIN_SQUARED_NORM = 1e-30

CLASS_SELECTIONS = ("changed", "ground_truth")
GRADIENT_OF = ("contrast", "label_logit")


def _one_hot_labels(y, num_classes):
    """Labels as a float32 `(batch, num_classes)` matrix.

    Integer (sparse) labels, of shape `(batch,)` or `(batch, 1)`, are one-hot
    encoded when the model has more than one logit. With a single logit the
    label is the binary target itself.
    """
    y = ops.convert_to_tensor(y)
    if num_classes > 1 and (len(y.shape) == 1 or y.shape[-1] == 1):
        if len(y.shape) == 2:
            y = ops.squeeze(y, axis=-1)
        return ops.one_hot(ops.cast(y, "int32"), num_classes, dtype="float32")
    y = ops.cast(y, "float32")
    if len(y.shape) == 1:
        y = ops.expand_dims(y, -1)
    return y


def contrast_weights(
    y, y_counterfactual, num_classes, class_selection="changed", class_weights=None
):
    """Per-class weights `w_c` of the contrast logit `z = sum_c w_c f_c(x)`.

    Formula:

    ```
    w_c = m_c * (y_cf[c] - y[c])
    ```

    where `m_c` selects classes: `"changed"` keeps every class (so only the
    classes whose label changes contribute), `"ground_truth"` keeps only the
    classes positive at `x` (the paper's "ground-truth class only"), and
    `class_weights`, if given, multiplies `m_c`.

    Consequences, with `f` the pre-activation logits:

    * binary sigmoid (one logit): `z = ±f`, the sign of `y_cf - y`. Both class
      selections coincide (the negative class's logit is `-f`).
    * softmax, `"changed"`: `z = f_{y_cf} - f_{y}`, the log-odds of the
      counterfactual's class against the example's own; invariant to the
      softmax's shift of all logits.
    * softmax, `"ground_truth"`: `z = -f_{y}`: the example's own logit must
      decrease toward the counterfactual. The only non-empty choice when
      `y_cf` is all zeros (the VQA-style counterfactual).
    * multi-label: every label that changes contributes with its sign.

    Args:
        y: labels of the examples: integer class ids `(batch,)` /
            `(batch, 1)` or dense `(batch, num_classes)` targets.
        y_counterfactual: labels of their counterfactuals, same form.
        num_classes: width of the logits.
        class_selection: `"changed"` (default) or `"ground_truth"`.
        class_weights: optional sequence of `num_classes` non-negative floats.

    Returns:
        A float32 tensor `(batch, num_classes)` (cast it to the logits'
        dtype). A row of zeros means the pair carries no supervision (equal
        labels).
    """
    if class_selection not in CLASS_SELECTIONS:
        raise ValueError(
            f"class_selection must be one of {CLASS_SELECTIONS}; received {class_selection!r}."
        )
    y = _one_hot_labels(y, num_classes)
    y_counterfactual = _one_hot_labels(y_counterfactual, num_classes)
    weights = y_counterfactual - y
    if class_selection == "ground_truth" and num_classes > 1:
        weights = weights * ops.cast(y > 0, "float32")
    if class_weights is not None:
        weights = weights * ops.convert_to_tensor(class_weights, "float32")
    return weights


def label_logit_weights(y, num_classes):
    """Per-class weights `w_c` of the label-blind logit `z = sum_c w_c f_c(x)`.

    Formula:

    ```
    binary (one logit):  w = 1,            z = f
    multi-class:         w_c = [c = y],    z = f_y  (the logit of x's own label)
    ```

    Unlike `contrast_weights`, the weights ignore the partner's label: every
    row gets a non-zero `w`, so gradient supervision acts on every pair,
    pairs of equal labels included (the "random relations that ignore the
    labels" control of Teney et al. 2020, Table 3). Multi-label outputs have
    no single own logit and are not supported.

    Args:
        y: labels of the examples, as in `contrast_weights`.
        num_classes: width of the logits.

    Returns:
        A float32 tensor `(batch, num_classes)`.
    """
    y = _one_hot_labels(y, num_classes)
    if num_classes == 1:
        return ops.ones_like(y)
    return ops.cast(ops.one_hot(ops.argmax(y, axis=-1), num_classes), "float32")


def float_dtype(x):
    """float64 stays float64; every other dtype (half precision under a mixed
    policy included) is computed in float32."""
    dtype = keras.backend.standardize_dtype(ops.convert_to_tensor(x).dtype)
    return "float64" if dtype == "float64" else "float32"


def _flat(x, dtype):
    x = ops.cast(x, dtype)
    return ops.reshape(x, (ops.shape(x)[0], -1))


def cosine_alignment(gradient, x, x_counterfactual, min_relative_distance=1e-5, squared_norms=None):
    """Cosine between an input gradient and the step toward the counterfactual.

    Formula:

    ```
    t     = x_cf - x
    cos   = <g, t> / (|g| |t|)
    valid = |t| > min_relative_distance * max(|x|, |x_cf|)  and  |g| > 0
    ```

    Computed in float32 (float64 for float64 inputs) whatever the inputs'
    dtype, with the double-`where`
    pattern so that neither the value nor its gradients are ever NaN or Inf:
    invalid points get `cos = 0` and zero gradients.

    Args:
        gradient: `g`, the input gradient at `x` of the contrast logit (see
            `contrast_weights`), shape `(batch, ...)`.
        x: the points in the GS space, same shape.
        x_counterfactual: their counterfactuals, same shape.
        min_relative_distance: pairs closer than this, relative to the larger
            of the two norms, are treated as identical and not supervised.
        squared_norms: optional `(|x|^2, |x_cf|^2)`, each `(batch,)`, when the
            caller has them (a batch of pairs holds every point once as `x`
            and once as a partner's `x_cf`: one pass over memory saved).

    Returns:
        `(cos, valid)`: float32 `(batch,)` cosines (0 where invalid) and a
        boolean `(batch,)` mask.

    Example:

    >>> import numpy as np
    >>> w = np.array([[1.0, 2.0]])  # f(x) = x @ w.T, label 1 -> 0: g = -w
    >>> x, x_cf = np.zeros((1, 2)), np.array([[-1.0, -2.0]])
    >>> cos, valid = cfkeras.losses.cosine_alignment(-w, x, x_cf)
    >>> float(cos[0]), bool(valid[0])  # aligned: the GS loss 1 - cos is 0
    (1.0, True)
    """
    dtype = float_dtype(gradient)
    g = _flat(gradient, dtype)
    x = _flat(x, dtype)
    x_counterfactual = _flat(x_counterfactual, dtype)
    t = x_counterfactual - x
    gg = ops.sum(g * g, axis=-1)
    tt = ops.sum(t * t, axis=-1)
    if squared_norms is None:
        squared_norms = (ops.sum(x * x, axis=-1), ops.sum(x_counterfactual * x_counterfactual, -1))
    reference = ops.maximum(*(ops.cast(norm, dtype) for norm in squared_norms))
    valid = ops.logical_and(
        gg > _MIN_SQUARED_NORM,
        ops.logical_and(
            tt > _MIN_SQUARED_NORM,
            tt > (min_relative_distance**2) * ops.stop_gradient(reference),
        ),
    )
    safe_gg = ops.where(valid, gg, ops.ones_like(gg))
    safe_tt = ops.where(valid, tt, ops.ones_like(tt))
    cos = ops.sum(g * t, axis=-1) * ops.rsqrt(safe_gg) * ops.rsqrt(safe_tt)
    return ops.where(valid, cos, ops.zeros_like(cos)), valid
