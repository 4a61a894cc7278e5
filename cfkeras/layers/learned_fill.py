"""A learned vector in place of masked features."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="cfkeras")
class LearnedFill(keras.layers.Layer):
    """Replaces masked feature vectors with one learned vector.

    Formula, for features `x` `(batch, N, D)` and a mask `m` `(batch, N)`:

    ```
    out_n = (1 - m_n) * x_n + m_n * v,    v in R^D trainable (zeros at first)
    ```

    The model-side half of `cfkeras.masking.FeatureMasking(fill="learned")`,
    whose inputs are `{"features": x, "mask": m}` (masked rows already zero).

    Args:
        initializer: initializer of `v` (default zeros: at first the same as
            `fill="zeros"`).

    Example:

    >>> import keras
    >>> features = keras.Input((16, 8), name="features")
    >>> mask = keras.Input((16,), name="mask")
    >>> filled = cfkeras.layers.LearnedFill()({"features": features, "mask": mask})
    """

    def __init__(self, initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        self.initializer = keras.initializers.get(initializer)

    def build(self, input_shape):
        self.fill = self.add_weight(
            shape=(input_shape["features"][-1],), initializer=self.initializer, name="fill"
        )

    def call(self, inputs):
        features = inputs["features"]
        mask = ops.cast(inputs["mask"], features.dtype)[..., None]
        return (1 - mask) * features + mask * ops.cast(self.fill, features.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape["features"]

    def get_config(self):
        config = super().get_config()
        config["initializer"] = keras.initializers.serialize(self.initializer)
        return config
