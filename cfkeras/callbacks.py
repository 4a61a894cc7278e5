"""Callbacks that log what Keras's own TensorBoard callback cannot."""
