"""SavedModel export of a text classifier with its tokenisation inside the graph."""

import os

import keras
import tensorflow as tf
from keras import ops

from cfkeras.models.gradient_supervision import GradientSupervisionModel
from cfkeras.models.graph import output_activation

SERVE = "serve"
CLASSIFY = "classify"
_PROBE_TEXTS = ("a short probe sentence", "")


def export_text_classifier(model, vectorizer, filepath, class_names=None, verbose=False):
    """Exports `vectorizer` followed by `model` as a SavedModel serving raw strings.

    The SavedModel takes a batch of raw strings and does the tokenisation in
    its graph (`keras.layers.TextVectorization` is made of core TensorFlow
    ops), so it loads with plain `tf.saved_model.load` (or TF-Serving) in a
    process that imports neither cfkeras nor `tensorflow_text`. Its endpoints:

    ```
    serve(texts)     -> probabilities, float32 (batch, classes)
    classify(texts)  -> {"probabilities": (batch, classes) float32,
                         "label": (batch,) string}        only with `class_names`
    ```

    `texts` is a `tf.string` tensor of shape `(batch,)`. `serve` is also the
    `serving_default` signature. The label is `class_names[p > 0.5]` for a
    sigmoid output with one column (`class_names` then names the negative and
    the positive class) and `class_names[argmax p]` for a softmax output.

    Args:
        model: a Keras model mapping the vectorizer's token ids to
            probabilities (sigmoid or softmax output): a plain functional or
            Sequential model, a `cfkeras.models.StackedEnsemble`, or a
            `cfkeras.GradientSupervisionModel`, exported as its `call` on
            single inputs (the wrapped model's outputs).
        vectorizer: the adapted Keras preprocessing layer mapping strings to
            token ids the model was trained on, e.g. a
            `keras.layers.TextVectorization`.
        filepath: the SavedModel's directory.
        class_names: optional list of class names: two for a one-column
            sigmoid output (negative, positive), one per column for softmax.
            Adds the `classify` endpoint.
        verbose: print the endpoints written (`ExportArchive.write_out`).

    Returns:
        `filepath`, as a string.

    Raises:
        ValueError: `vectorizer` is not a layer mapping a batch of strings to
            numbers (or is not adapted), `model` cannot take its output or
            does not output `(batch, classes)` probabilities, or
            `class_names` does not match the output.

    Example:

    >>> import keras, tensorflow as tf
    >>> vectorizer = keras.layers.TextVectorization(100, output_sequence_length=8)
    >>> vectorizer.adapt(["a fine film", "a dull film"])
    >>> model = cfkeras.models.bag_of_embeddings_classifier(vectorizer.vocabulary_size())
    >>> path = cfkeras.export.export_text_classifier(
    ...     model, vectorizer, "/tmp/sentiment", class_names=["negative", "positive"])
    >>> served = tf.saved_model.load(path)  # in any TensorFlow process
    >>> served.classify(tf.constant(["a fine film"]))["label"].shape
    TensorShape([1])
    """
    probe = _probe(model, vectorizer)
    width = probe.shape[-1]
    activation = _activation(model)
    if activation not in (None, "sigmoid", "softmax"):
        raise ValueError(
            f"export_text_classifier serves probabilities, but model {model.name!r} "
            f"ends in a {activation!r} activation (logits?): give it a sigmoid or "
            "softmax output."
        )
    if class_names is not None:
        class_names = [str(name) for name in class_names]
        _check_class_names(class_names, width, activation)

    def serve(texts):
        return ops.cast(model(vectorizer(texts), training=False), "float32")

    def classify(texts):
        probabilities = serve(texts)
        if width == 1:
            index = ops.cast(probabilities[:, 0] > 0.5, "int32")
        else:
            index = ops.argmax(probabilities, axis=-1)
        label = tf.gather(tf.constant(class_names), index)
        return {"probabilities": probabilities, "label": label}

    texts = tf.TensorSpec([None], tf.string, name="texts")
    archive = keras.export.ExportArchive()
    # Tracked explicitly: the vectorizer's lookup table is not a variable.
    archive.track(vectorizer)
    archive.track(model)
    archive.add_endpoint(SERVE, serve, input_signature=[texts])
    if class_names is not None:
        archive.add_endpoint(CLASSIFY, classify, input_signature=[texts])
    filepath = os.fspath(filepath)
    archive.write_out(filepath, verbose=verbose)
    return filepath


def _probe(model, vectorizer):
    """Runs the pipeline on two strings (building the model); clear errors if it fails."""
    if not isinstance(vectorizer, keras.layers.Layer):
        raise ValueError(
            "export_text_classifier needs `vectorizer`, the Keras layer mapping raw "
            "strings to the model's token ids (e.g. the adapted "
            f"keras.layers.TextVectorization); received {vectorizer!r}. To export a "
            "model on token ids, use `model.export(filepath)`."
        )
    try:
        ids = vectorizer(tf.constant(_PROBE_TEXTS))
    except Exception as error:
        raise ValueError(
            f"`vectorizer` ({vectorizer.name!r}) must map a batch of strings, shape "
            "(batch,), to token ids; calling it on one failed (is it adapted?): "
            f"{error}"
        ) from error
    if ids.dtype == tf.string:
        raise ValueError(
            f"`vectorizer` ({vectorizer.name!r}) must map strings to token ids; it returns strings."
        )
    try:
        probabilities = model(ids, training=False)
    except Exception as error:
        raise ValueError(
            f"model {model.name!r} cannot take the output of `vectorizer` "
            f"({vectorizer.name!r}, {ids.dtype.name} {tuple(ids.shape)}): {error}"
        ) from error
    if not isinstance(probabilities, tf.Tensor) or len(probabilities.shape) != 2:
        raise ValueError(
            f"export_text_classifier needs a model with one (batch, classes) output; "
            f"model {model.name!r} returns {probabilities!r}."
        )
    return probabilities


def _activation(model):
    """The name of the model's output activation, or None when it cannot be found."""
    if isinstance(model, GradientSupervisionModel):
        model = model.head
    return output_activation(model)


def _check_class_names(class_names, width, activation):
    if width == 1 and len(class_names) != 2:
        raise ValueError(
            "A one-column (sigmoid) output needs two class names, negative then "
            f"positive; received {class_names}."
        )
    if width > 1 and len(class_names) != width:
        raise ValueError(
            f"The model outputs {width} classes; received {len(class_names)} class "
            f"names: {class_names}."
        )
    if width > 1 and activation == "sigmoid":
        raise ValueError(
            "`class_names` (one label per text) needs a softmax output; this model's "
            f"{width} sigmoid outputs are independent (multi-label)."
        )
