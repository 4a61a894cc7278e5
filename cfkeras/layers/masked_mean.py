"""Mean over the true length of a padded sequence."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="cfkeras")
class MaskedMean(keras.layers.Layer):
    """Averages a sequence over its non-padding steps.

    Formula:

    ```
    mean = sum_t mask_t * x_t / max(sum_t mask_t, 1)
    ```

    Unlike `keras.layers.GlobalAveragePooling1D`, an all-padding sequence
    gives zeros instead of `0 / 0 = NaN` (in the value and in its gradients).
    The mask is the Keras mask propagated from, e.g.,
    `Embedding(mask_zero=True)`; without one every step counts.

    Example:

    >>> import numpy as np, keras
    >>> ids = keras.Input((None,), dtype="int32")
    >>> h = keras.layers.Embedding(100, 4, mask_zero=True)(ids)
    >>> mean = cfkeras.layers.MaskedMean()(h)
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, inputs, mask=None):
        if mask is None:
            return ops.mean(inputs, axis=1)
        mask = ops.cast(ops.expand_dims(mask, -1), inputs.dtype)
        count = ops.sum(mask, axis=1)
        return ops.sum(inputs * mask, axis=1) / ops.maximum(count, ops.ones_like(count))

    def compute_mask(self, inputs, mask=None):
        return None

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[2])
