"""The 2048-wide dots of M1's GS step, alone: TensorFlow's XLA against JAX's.

A profiling aid for issue 6. cfkeras's and JAX's GS steps on M1 (2048 -> 64
x 3 -> 80, 512 rows) compile the same five 2048-wide dots (XLA HLO dumps:
`XLA_FLAGS="--xla_dump_to=DIR --xla_dump_hlo_as_text"`): the forward
`x @ W0`, the input gradient `d @ W0^T`, the weight gradient `x^T @ d` twice
(main loss and GS term) and the backward of the input gradient, a forward-like
dot. This script times the three shapes alone, compiled with XLA, in the
framework given (`tf` in the cfkeras environment, `jax` in the JAX one):

    python benchmarks/m1_dots.py tf
    ../venvs/jax/bin/python benchmarks/m1_dots.py jax
"""

import sys
import time

import numpy as np

SHAPES = {
    "forward x @ W   [512,2048] x [2048,64]": ("x", "w", "nn"),
    "input grad d @ W^T [512,64] x [64,2048]": ("d", "w", "nt"),
    "weight grad x^T @ d [2048,512] x [512,64]": ("x", "d", "tn"),
}


def main(framework, steps=200):
    rng = np.random.default_rng(0)
    arrays = {
        "x": rng.normal(size=(512, 2048)).astype("float32"),
        "w": rng.normal(size=(2048, 64)).astype("float32"),
        "d": rng.normal(size=(512, 64)).astype("float32"),
    }
    if framework == "tf":
        import tensorflow as tf

        tensors = {k: tf.constant(v) for k, v in arrays.items()}

        def make(a, b, mode):
            return tf.function(
                lambda: tf.matmul(
                    tensors[a], tensors[b], transpose_a=mode[0] == "t", transpose_b=mode[1] == "t"
                ),
                jit_compile=True,
            )

        sync = lambda result: result.numpy()  # noqa: E731
    elif framework == "jax":
        import jax
        import jax.numpy as jnp

        tensors = {k: jnp.asarray(v) for k, v in arrays.items()}

        def make(a, b, mode):
            dot = jax.jit(
                lambda u, v: (u.T if mode[0] == "t" else u) @ (v.T if mode[1] == "t" else v)
            )
            return lambda: dot(tensors[a], tensors[b])

        sync = lambda result: result.block_until_ready()  # noqa: E731
    else:
        raise SystemExit(f"framework must be tf or jax; received {framework!r}")
    for name, spec in SHAPES.items():
        function = make(*spec)
        for _ in range(20):
            sync(function())
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            sync(function())
            times.append(time.perf_counter() - start)
        print(f"{framework}  {name}  {1e3 * np.median(times):.3f} ms", flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tf")
