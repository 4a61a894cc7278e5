"""Tiny models shared by the trainer tests (not a test module)."""

import keras
import keras_hub


def nested_mlp(seed=0):
    """4 -> [a nested functional model "body": Dense(8, tanh)] -> Dense(1, sigmoid)."""
    keras.utils.set_random_seed(seed)
    inner_input = keras.Input((4,))
    body = keras.Model(
        inner_input, keras.layers.Dense(8, activation="tanh")(inner_input), name="body"
    )
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(1, activation="sigmoid", name="out")(body(inputs))
    return keras.Model(inputs, outputs, name="nested")


def tiny_bert(length=8, seed=0):
    """A 2-layer keras-hub BERT of hidden width 16 over a vocabulary of 50."""
    keras.utils.set_random_seed(seed)
    return keras_hub.models.BertBackbone(
        vocabulary_size=50,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=length,
    )
