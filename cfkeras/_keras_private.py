"""Every private Keras name that cfkeras touches, behind one door.

cfkeras's trainers keep Keras's contract (`compile`/`fit`/`evaluate`/`save`
work unchanged), which a few times means calling what Keras's own
`train_step` calls but does not export. Each name is resolved when it is
used, never at import: a Keras release that moves one fails at that use with
a message naming the Keras version and the range cfkeras is tested with.
`tests/test_keras_private.py` asserts that every name exists with the
signature relied on here, and that Keras still calls the hooks cfkeras
overrides (`OVERRIDDEN_HOOKS`).

Tested with Keras `TESTED_KERAS` (also the bounds in setup.py).
"""

import importlib
import inspect

import keras

TESTED_KERAS = ">=3.15,<3.16"

# Methods of `keras.Model` that cfkeras's trainers override. If Keras stopped
# calling one, the override would be silently dead: XLA off for
# `_resolve_auto_jit_compile`, compiled metrics built from a pair for
# `_symbolic_build`.
OVERRIDDEN_HOOKS = {
    # `compile(jit_compile="auto")` resolves through it; no public argument
    # lets a model say "XLA on CPU too" while keeping compile's signature.
    "_resolve_auto_jit_compile": ("self",),
    # `fit`/`evaluate` build the compiled loss and metrics from one batch
    # through it; a batch of pairs must be shown to them as one member.
    "_symbolic_build": ("self", "iterator", "data_batch"),
    # Under a strategy, `fit` first averages one distributed batch over the
    # replicas (a `MEAN` reduction, which fails for boolean inputs such as
    # padding masks); cfkeras takes the first replica's batch instead.
    "_maybe_symbolic_build": ("self", "iterator", "data_batch"),
}

# `(module, attribute)` of the private functions used, with the parameters
# relied on, and why no public API serves.
_FUNCTIONS = {
    # Keras scales each replica's loss by 1 / replicas under tf.distribute and
    # unscales it before its loss tracker; our trackers must do the same.
    "unscale_loss_for_distribution": ("keras.src.losses.loss", ("value",)),
    # What Keras's own "auto" consults (every layer supports XLA); there is
    # no public predicate.
    "model_supports_jit": ("keras.src.trainers.trainer", ("model",)),
    # Whether Keras reduces a step's outputs across workers with
    # `strategy.reduce("MEAN", v, axis=0)`, which fails on scalar logs
    # (tensorflow/tensorflow#72388); the trainers then return them as (1,).
    "_collective_all_reduce_multi_worker": (
        "keras.src.backend.tensorflow.trainer",
        ("strategy",),
    ),
}

# Private methods and attributes of models, layers and tensors, with why.
_MEMBERS = {
    # The wrapper Keras's train_step calls: it passes `training` only to a
    # `compute_loss` that accepts it (public `compute_loss` may be a user's).
    "_compute_loss": ("x", "y", "y_pred", "sample_weight", "training"),
    # Reduces one `model.losses` entry as compute_loss does (regularisers).
    "_aggregate_additional_loss": ("loss",),
    # Yields a layer's sub-layers, recursively; `model.layers` is one level.
    "_flatten_layers": ("include_self", "recursive"),
}
_ATTRIBUTES = (
    # The `loss` tracker Keras reports; `model.metrics` exposes it but not by role.
    "_loss_tracker",
    # The compiled loss (`compile(loss=...)`) as a callable of (y, y_pred, w).
    "_compile_loss",
    # The strategy a model was built under (`model.distribute_strategy` is
    # public but falls back to the default strategy, hiding "none").
    "_distribute_strategy",
)


def _fail(name, error):
    raise RuntimeError(
        f"cfkeras relies on Keras's private `{name}`, which Keras {keras.version()} "
        f"does not provide as expected ({error}). cfkeras is tested with keras"
        f"{TESTED_KERAS}: install a Keras in that range, or report the version."
    ) from error


def _function(name):
    module, _ = _FUNCTIONS[name]
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as error:
        _fail(f"{module}.{name}", error)


def _member(owner, name):
    try:
        return getattr(owner, name)
    except AttributeError as error:
        _fail(f"{type(owner).__name__}.{name}", error)


def unscale_loss_for_distribution(value):
    """A loss value scaled per replica by Keras, back on the global scale."""
    return _function("unscale_loss_for_distribution")(value)


def reduces_logs_across_workers(strategy):
    """Whether Keras reduces step outputs along axis 0 across workers (multi-worker)."""
    return _function("_collective_all_reduce_multi_worker")(strategy)


def model_supports_jit(model):
    """Whether Keras would allow XLA for `model` (every layer supports it)."""
    return _function("model_supports_jit")(model)


def compute_loss(model, x, y, y_pred, sample_weight, training):
    """The compiled loss plus `model.losses`, as Keras's train_step computes it."""
    return _member(model, "_compute_loss")(
        x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training
    )


def aggregate_additional_loss(model, loss):
    """One entry of `model.losses` reduced as Keras adds it to the loss."""
    return _member(model, "_aggregate_additional_loss")(loss)


def flatten_layers(layer):
    """`layer` and all its sub-layers, recursively."""
    return _member(layer, "_flatten_layers")(include_self=True, recursive=True)


def loss_tracker(model):
    """The `Mean` tracker behind the reported `loss`."""
    return _member(model, "_loss_tracker")


def compiled_loss(model):
    """The compiled loss callable `(y, y_pred, sample_weight)`, or None."""
    return _member(model, "_compile_loss")


def distribute_strategy(model):
    """The strategy `model` was created under, or None."""
    return _member(model, "_distribute_strategy")


def producing_layer(tensor):
    """The layer (operation) that produced a symbolic `KerasTensor`."""
    try:
        return tensor._keras_history.operation
    except AttributeError as error:
        _fail("KerasTensor._keras_history.operation", error)


def call_outputs(layer):
    """The output of each call of `layer` in the graphs it is used in, by node.

    A nested functional model's public `output` is the output of its own
    inner graph; the outer graph holds the output of its call node.
    """
    try:
        return [node.output_tensors for node in layer._inbound_nodes]
    except AttributeError as error:
        _fail("Layer._inbound_nodes[].output_tensors", error)


def contract():
    """`{name: problem}` for every private name that is missing or changed.

    Empty when this Keras offers everything cfkeras relies on. Used by the
    contract test; cheap (no model is built beyond a tiny one).
    """
    problems = {}

    def check_parameters(name, function, expected):
        parameters = tuple(inspect.signature(function).parameters)
        missing = [p for p in expected if p not in parameters]
        if missing:
            problems[name] = f"parameters {parameters} lack {missing}"

    for name, (module, expected) in _FUNCTIONS.items():
        try:
            function = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as error:
            problems[name] = repr(error)
            continue
        check_parameters(name, function, expected)
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(loss="mse")
    for name, expected in _MEMBERS.items():
        if not hasattr(model, name):
            problems[name] = "missing on keras.Model"
            continue
        check_parameters(name, getattr(model, name), expected)
    for name in _ATTRIBUTES:
        if not hasattr(model, name):
            problems[name] = "missing on a compiled keras.Model"
    for name, expected in OVERRIDDEN_HOOKS.items():
        if not hasattr(keras.Model, name):
            problems[name] = "missing on keras.Model"
            continue
        check_parameters(name, getattr(keras.Model, name), expected)
    if not hasattr(model.outputs[0], "_keras_history"):
        problems["_keras_history"] = "missing on KerasTensor"
    outer_inputs = keras.Input((2,))
    outer = keras.Model(outer_inputs, model(outer_inputs))
    nodes = getattr(model, "_inbound_nodes", None)
    if not nodes or nodes[-1].output_tensors[0] is not outer.outputs[0]:
        problems["_inbound_nodes"] = "a nested model's call node does not hold its outer output"
    return problems
