"""`bag_of_embeddings_classifier`: the embeddings' initializer is an argument
(Keras's uniform ±0.05 by default, N(0, 1) for the factor study)."""

import json

import keras
import numpy as np

import cfkeras


def embedding_std(model):
    return float(np.std(model.get_layer("embedding").get_weights()[0]))


def test_default_initializer_is_keras_uniform():
    keras.utils.set_random_seed(0)
    weights = cfkeras.models.bag_of_embeddings_classifier(500, 8).get_layer("embedding")
    values = weights.get_weights()[0]
    assert np.abs(values).max() <= 0.05
    np.testing.assert_allclose(np.std(values), 0.05 / np.sqrt(3), rtol=0.1)


def test_normal_initializer_survives_the_stacked_ensemble_and_the_config():
    keras.utils.set_random_seed(0)
    normal = keras.initializers.RandomNormal(stddev=1.0)
    model = cfkeras.models.bag_of_embeddings_classifier(500, 8, embeddings_initializer=normal)
    np.testing.assert_allclose(embedding_std(model), 1.0, rtol=0.1)
    config = json.loads(json.dumps(model.get_layer("embedding").get_config()))
    assert config["embeddings_initializer"]["config"]["stddev"] == 1.0
    ensemble = cfkeras.models.stacked_ensemble(
        lambda seed: cfkeras.models.bag_of_embeddings_classifier(
            500, 8, sequence_length=6, embeddings_initializer=normal
        ),
        2,
        gs_layer="mean_embedding",
    )
    tables = [w for w in ensemble.get_weights() if w.shape == (500, 8)]
    assert len(tables) == 2
    for table in tables:
        np.testing.assert_allclose(np.std(table), 1.0, rtol=0.1)
