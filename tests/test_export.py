"""`cfkeras.export.export_text_classifier`: raw strings in, probabilities out, served by
a process that imports only TensorFlow."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import cfkeras
from cfkeras.export import export_text_classifier
from cfkeras.models.ensemble import GS_SPACE

SENTENCES = [
    "a wonderful warm film",
    "a dull and boring film",
    "great acting and a great story",
    "terrible acting and a boring story",
    "the plot was wonderful",
    "the plot was terrible",
    "i loved every minute",
    "i hated every minute",
]
POSITIVE = [1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
# Unseen words (OOV), an empty string, and batch sizes other than the first.
BATCHES = [
    ["a wonderful story", "a boring film", "zzz unseen words", ""],
    ["great great great"],
]
THREE_CLASSES = ["negative", "neutral", "positive"]
SENTIMENT = ["negative", "positive"]

# Run by a fresh interpreter importing only TensorFlow and NumPy.
SERVER = textwrap.dedent(
    """
    import json, sys

    # Any import of these now raises ImportError: the SavedModel must not need them.
    sys.modules["cfkeras"] = sys.modules["tensorflow_text"] = None
    import tensorflow as tf

    request = json.load(sys.stdin)
    results = {}
    for name, path in request["models"].items():
        served = tf.saved_model.load(path)
        results[name] = []
        for batch in request["batches"]:
            texts = tf.constant(batch)
            classified = served.classify(texts)
            results[name].append({
                "serve": served.serve(texts).numpy().tolist(),
                "probabilities": classified["probabilities"].numpy().tolist(),
                "label": [label.decode() for label in classified["label"].numpy()],
            })
    results["modules"] = sorted(name for name, module in sys.modules.items() if module is None)
    json.dump(results, sys.stdout)
    """
)


def vectorizer():
    layer = keras.layers.TextVectorization(32, output_sequence_length=6)
    layer.adapt(SENTENCES)
    return layer


def serve_in_tensorflow_only(models):
    """`{name: [per batch {"serve", "probabilities", "label"}]}` from a fresh process."""
    request = json.dumps({"models": models, "batches": BATCHES})
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run(
        [sys.executable, "-c", SERVER],
        input=request,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A softmax bag-of-embeddings model and a sigmoid GS-trained ensemble, exported
    and served from one TensorFlow-only process."""
    keras.utils.set_random_seed(0)
    root = tmp_path_factory.mktemp("export")
    vectorize = vectorizer()
    vocabulary = vectorize.vocabulary_size()

    softmax = cfkeras.models.bag_of_embeddings_classifier(
        vocabulary, embedding_dim=8, num_classes=3, name="softmax_boe"
    )

    build = lambda seed: cfkeras.models.bag_of_embeddings_classifier(vocabulary, embedding_dim=8)
    ensemble = cfkeras.models.stacked_ensemble(build, 2, gs_layer="mean_embedding")
    gs = cfkeras.GradientSupervisionModel(ensemble, gs_layer=GS_SPACE, gs_weight=1.0)
    gs.compile(optimizer="adam", loss="binary_crossentropy", jit_compile=False)
    ids = vectorize(tf.constant(SENTENCES)).numpy()
    labels = np.array(POSITIVE, "float32")
    # Each sentence's counterfactual is its neighbour, with the other label.
    partner = np.arange(len(SENTENCES)) ^ 1
    pairs = cfkeras.Pairs(ids, ids[partner], labels, labels[partner])
    gs.fit(pairs.to_dataset(batch_size=4, seed=0), epochs=1, verbose=0)

    models = {"softmax": softmax, "gs_ensemble": gs}
    classes = {"softmax": THREE_CLASSES, "gs_ensemble": SENTIMENT}
    paths = {
        name: export_text_classifier(
            model, vectorize, root / name, class_names=classes[name], verbose=False
        )
        for name, model in models.items()
    }
    return models, vectorize, serve_in_tensorflow_only(paths)


@pytest.mark.parametrize("name", ["softmax", "gs_ensemble"])
def test_serve_matches_predict_on_token_ids_at_any_batch_size(served, name):
    models, vectorize, results = served
    for batch, result in zip(BATCHES, results[name]):
        expected = models[name].predict(vectorize(tf.constant(batch)), verbose=0)
        assert np.shape(result["serve"]) == expected.shape == (len(batch), expected.shape[1])
        np.testing.assert_allclose(result["serve"], expected, atol=1e-5)
        np.testing.assert_allclose(result["probabilities"], expected, atol=1e-5)


def test_gradient_supervision_model_serves_the_wrapped_ensemble(served):
    models, vectorize, results = served
    ensemble = models["gs_ensemble"].model
    expected = ensemble.predict(vectorize(tf.constant(BATCHES[0])), verbose=0)
    np.testing.assert_allclose(results["gs_ensemble"][0]["serve"], expected, atol=1e-5)


def test_classify_labels_softmax_argmax_and_sigmoid_threshold(served):
    _, _, results = served
    for result in results["softmax"]:
        index = np.argmax(result["probabilities"], axis=-1)
        assert result["label"] == [THREE_CLASSES[i] for i in index]
    for result in results["gs_ensemble"]:
        positive = np.asarray(result["probabilities"])[:, 0] > 0.5
        assert result["label"] == [SENTIMENT[int(p)] for p in positive]


def test_served_without_cfkeras_or_tensorflow_text(served):
    # The server ran with both imports blocked (TensorFlow itself imports parts of Keras).
    _, _, results = served
    assert {"cfkeras", "tensorflow_text"} <= set(results["modules"])


# === Errors ===


def small_model():
    return cfkeras.models.bag_of_embeddings_classifier(32, embedding_dim=4)


@pytest.mark.parametrize(
    "bad, message",
    [
        (None, "needs `vectorizer`"),
        (keras.layers.Dense(4), "must map a batch of strings"),
        (keras.layers.TextVectorization(32), "is it adapted"),
        (keras.layers.Identity(), "returns strings"),
    ],
    ids=["none", "dense", "not_adapted", "identity"],
)
def test_a_vectorizer_that_does_not_map_strings_to_ids_raises(tmp_path, bad, message):
    with pytest.raises(ValueError, match=message):
        export_text_classifier(small_model(), bad, tmp_path / "model")
    assert not (tmp_path / "model").exists()


def test_a_model_that_cannot_take_the_ids_raises(tmp_path):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(inputs))
    with pytest.raises(ValueError, match="cannot take the output of `vectorizer`"):
        export_text_classifier(model, vectorizer(), tmp_path / "model")


def test_a_logit_output_raises(tmp_path):
    model = small_model()
    model.get_layer("output").activation = keras.activations.linear
    with pytest.raises(ValueError, match="'linear' activation"):
        export_text_classifier(model, vectorizer(), tmp_path / "model")


@pytest.mark.parametrize(
    "num_classes, class_names, message",
    [
        (1, ["positive"], "two class names"),
        (3, SENTIMENT, "3 classes"),
    ],
)
def test_class_names_must_match_the_output(tmp_path, num_classes, class_names, message):
    model = cfkeras.models.bag_of_embeddings_classifier(32, 4, num_classes=num_classes)
    with pytest.raises(ValueError, match=message):
        export_text_classifier(model, vectorizer(), tmp_path / "model", class_names=class_names)
