"""Graph surgery on functional Keras models: where cfkeras's trainers cut a model.

Splitting a model at a layer (the GS space), finding the layer that produces
its output and that layer's activation (to read logits), the members' head
of a stacked ensemble, and whether a layer couples the examples of a batch.
The layer names of `cfkeras.models.StackedEnsemble` live here because the
trainers look for them.
"""

import keras
from keras import ops

from cfkeras import _keras_private

# Layers of a `cfkeras.models.StackedEnsemble`: the stacked GS space
# `(batch, members, ...)`, the stacked member logits `(batch, members,
# classes)`, and its output (the activation of the mean logit).
GS_SPACE = "ensemble_gs_space"
MEMBER_LOGITS = "ensemble_member_logits"
ENSEMBLE_OUTPUT = "ensemble_output"
# Output activations whose logits cfkeras reads by stripping them.
OUTPUT_ACTIVATIONS = ("sigmoid", "softmax")


def symbolic_input(model):
    """The input structure of a functional or Sequential model, else None."""
    # A Sequential model has `inputs` but no `input` (AttributeError) in Keras 3.
    if isinstance(model, keras.Sequential) and getattr(model, "inputs", None):
        return model.inputs[0]
    return getattr(model, "input", None) if isinstance(model, keras.Model) else None


def has_layer(model, name):
    """Whether `model` has a (top-level) layer called `name`."""
    return any(layer.name == name for layer in getattr(model, "layers", []))


def check_single_output(model):
    """Raises if a functional model has more than one output (a keras-hub backbone).

    Raises:
        ValueError: naming the fix.
    """
    outputs = getattr(model, "outputs", None) if isinstance(model, keras.Model) else None
    if outputs and len(outputs) != 1:
        raise ValueError(
            f"cfkeras trains models with one output; model {model.name!r} has "
            f"{len(outputs)}. A keras-hub backbone outputs a dict of sequences: wrap it in a "
            "classifier first, e.g. `cfkeras.encoders.encoder_classifier(backbone, num_classes)`."
        )


def split_at_layer(model, layer_name):
    """Splits a functional model at a layer into `(encoder, head)`.

    `encoder` maps the model's inputs to the layer's output (the GS space),
    `head` maps that output to the model's output. Both share the model's
    layers and weights.

    Raises:
        ValueError: no such layer, a layer used more than once, or a layer
            whose output does not separate the inputs from the output (a skip
            connection around it).
    """
    model_input = symbolic_input(model)
    if not isinstance(model, keras.Model) or model_input is None:
        raise ValueError(
            "`gs_layer` needs a functional or Sequential model; for a "
            f"subclassed model pass `encoder=` and `head=`. Received {model!r}."
        )
    try:
        layer = model.get_layer(layer_name)
    except ValueError as error:
        names = [layer.name for layer in model.layers]
        raise ValueError(
            f"gs_layer={layer_name!r}: model {model.name!r} has no such layer; "
            f"its layers are {names}."
        ) from error
    check_single_output(model)
    # The output of the layer's call in this model: for a nested functional
    # model, its public `output` is that of its own inner graph.
    calls = _keras_private.call_outputs(layer)
    if len(calls) != 1:
        raise ValueError(
            f"gs_layer={layer_name!r} is called {len(calls)} times in the model: "
            "its output is ambiguous. Pass `encoder=` and `head=` instead."
        )
    space = calls[0][0] if len(calls[0]) == 1 else calls[0]
    if not isinstance(space, keras.KerasTensor):
        raise ValueError(
            f"gs_layer={layer_name!r} must output a single tensor; it outputs {space!r}."
        )
    encoder = keras.Model(model_input, space, name=f"{model.name}_encoder")
    try:
        head = keras.Model(space, model.outputs[0], name=f"{model.name}_head")
    except ValueError as error:
        raise ValueError(
            f"gs_layer={layer_name!r} does not separate the inputs of model "
            f"{model.name!r} from its output (the output also depends on the "
            "inputs through another path, e.g. a skip connection or a mask). "
            "Choose another layer or pass `encoder=` and `head=`."
        ) from error
    return encoder, head


def output_layer(model):
    """The layer that produces `model`'s single output, or None if unknown.

    Looks through nested functional and Sequential models to the innermost
    layer. A bare layer is its own output layer. None for a subclassed model
    (no symbolic outputs).

    Raises:
        ValueError: a functional model with more than one output.
    """
    if isinstance(model, keras.Sequential):
        return output_layer(model.layers[-1]) if model.layers else None
    if isinstance(model, keras.Model):
        outputs = getattr(model, "outputs", None)
        if not outputs:
            return None
        if len(outputs) != 1:
            raise ValueError(
                f"cfkeras trains models with one output; model {model.name!r} has {len(outputs)}."
            )
        layer = _keras_private.producing_layer(outputs[0])
        if layer is model:
            return None
        return output_layer(layer) if isinstance(layer, keras.Model) else layer
    return model if hasattr(model, "activation") else None


def output_activation(model):
    """The name of the activation of `model`'s output layer, or None."""
    layer = output_layer(model)
    return getattr(getattr(layer, "activation", None), "__name__", None)


def activate(logits, activation):
    """Applies an output activation (`"sigmoid"`, `"softmax"` or None) to logits."""
    if activation == "sigmoid":
        return ops.sigmoid(logits)
    if activation == "softmax":
        return ops.softmax(logits, axis=-1)
    return logits


def member_head(model, gs_layer, members_layer):
    """Maps the stacked GS space of an ensemble to its stacked member logits."""
    try:
        space = model.get_layer(gs_layer).output
        member_logits = model.get_layer(members_layer).output
    except ValueError as error:
        raise ValueError(f"members_layer={members_layer!r}: {error}") from error
    if len(space.shape) < 3 or len(member_logits.shape) != 3:
        raise ValueError(
            f"members_layer={members_layer!r} must output (batch, members, classes) and "
            f"gs_layer={gs_layer!r} (batch, members, ...); got {member_logits.shape} and "
            f"{space.shape}."
        )
    if space.shape[1] != member_logits.shape[1]:
        raise ValueError(
            f"gs_layer={gs_layer!r} stacks {space.shape[1]} members but "
            f"members_layer={members_layer!r} {member_logits.shape[1]}."
        )
    return keras.Model(space, member_logits, name=f"{model.name}_member_head")


def couples_batch(layer):
    """Whether a layer (or any layer inside it) normalises over the batch in training."""
    return any(
        isinstance(sub, keras.layers.BatchNormalization)
        for sub in _keras_private.flatten_layers(layer)
    )
