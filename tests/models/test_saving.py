"""Every cfkeras model saves to `.keras`, loads with `safe_mode=True` and predicts the same.

Neural Structured Learning's `AdversarialRegularization` cannot `save()`;
cfkeras's trainers (GS on a nested functional model, the stacked ensemble
alone and under GS, CAT on a keras-hub backbone) serialize their sub-models
by config: no Lambda layer and no pickled Python in the file, so
`safe_mode=True` (Keras's default) loads them. A process that has not
imported cfkeras cannot rebuild them; the error names the `cfkeras` module to
import (a subprocess test).
"""

import json
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest
from tiny_models import nested_mlp, tiny_bert

import cfkeras
from cfkeras.models import CounterfactualAdversarialModel, GradientSupervisionModel

LENGTH = 8


def tiny_encoder_classifier():
    backbone = tiny_bert(LENGTH)
    return cfkeras.encoders.encoder_classifier(backbone, num_classes=2, dropout=0.0)


def text_batch(n=4):
    rng = np.random.default_rng(0)
    mask = np.arange(LENGTH) < rng.integers(3, LENGTH + 1, (n, 1))
    return {
        "token_ids": np.where(mask, rng.integers(1, 50, (n, LENGTH)), 0).astype("int32"),
        "segment_ids": np.zeros((n, LENGTH), "int32"),
        "padding_mask": mask,
    }


def build(kind):
    """`(model, inputs)` of each kind, compiled, with perturbed (non-initial) weights."""
    if kind == "gs_nested":
        model = GradientSupervisionModel(nested_mlp(), gs_layer="body", gs_weight=2.0)
    elif kind == "ensemble":
        model = cfkeras.models.stacked_ensemble(nested_mlp, 2)
    elif kind == "gs_ensemble":
        ensemble = cfkeras.models.stacked_ensemble(
            lambda seed: keras.Sequential(
                [
                    keras.Input((4,)),
                    keras.layers.Dense(8, activation="tanh", name="hidden"),
                    keras.layers.Dense(1, activation="sigmoid"),
                ]
            ),
            2,
            gs_layer="hidden",
        )
        model = GradientSupervisionModel(ensemble, gs_layer="ensemble_gs_space")
    else:
        model = CounterfactualAdversarialModel(tiny_encoder_classifier(), seed=0)
    if kind == "cat":
        loss, x = keras.losses.SparseCategoricalCrossentropy(from_logits=True), text_batch()
    else:
        loss = keras.losses.BinaryCrossentropy()
        x = np.random.default_rng(1).normal(size=(6, 4)).astype("float32")
    model.compile(optimizer="adam", loss=loss)
    rng = np.random.default_rng(2)
    model.set_weights([w + 0.1 * rng.normal(size=w.shape) for w in model.get_weights()])
    return model, x


KINDS = ("gs_nested", "ensemble", "gs_ensemble", "cat")
CLASSES = {
    "gs_nested": "GradientSupervisionModel",
    "ensemble": "StackedEnsemble",
    "gs_ensemble": "GradientSupervisionModel",
    "cat": "CounterfactualAdversarialModel",
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """`{kind: (model, inputs, path)}`, every model saved to a `.keras` file."""
    directory = tmp_path_factory.mktemp("saved")
    result = {}
    for kind in KINDS:
        model, x = build(kind)
        path = directory / f"{kind}.keras"
        model.save(path)
        result[kind] = (model, x, path)
    return result


@pytest.mark.parametrize("kind", KINDS)
def test_loads_in_safe_mode_and_predicts_the_same(saved, kind):
    model, x, path = saved[kind]
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert type(loaded) is type(model)
    assert type(loaded).__name__ == CLASSES[kind]
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6
    )
    assert json.dumps(loaded.get_config(), sort_keys=True) == json.dumps(
        model.get_config(), sort_keys=True
    )


@pytest.mark.parametrize("kind", KINDS)
def test_the_file_holds_no_lambda_and_no_python_code(saved, kind):
    _, _, path = saved[kind]
    with zipfile.ZipFile(path) as archive:
        assert set(archive.namelist()) == {"metadata.json", "config.json", "model.weights.h5"}
        config = archive.read("config.json").decode("utf-8")
    for python in ('"Lambda"', "__lambda__", "__python_function__", "function_type"):
        assert python not in config, python
    assert f'"registered_name": "cfkeras>{CLASSES[kind]}"' in config


LOAD_WITHOUT_CFKERAS = """
import json, sys
import keras
messages = {}
for path in sys.argv[1:]:
    try:
        keras.saving.load_model(path, safe_mode=True)
        messages[path] = None
    except Exception as error:
        messages[path] = f"{type(error).__name__}: {error}"
messages["cfkeras imported"] = any(name.split(".")[0] == "cfkeras" for name in sys.modules)
print(json.dumps(messages))
"""


def test_loading_without_importing_cfkeras_names_the_package(saved, tmp_path):
    paths = [str(saved[kind][2]) for kind in ("gs_nested", "ensemble", "cat")]
    # From an empty directory, so that the repository is not on sys.path.
    done = subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_CFKERAS, *paths],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    messages = json.loads(done.stdout.strip().splitlines()[-1])
    assert messages.pop("cfkeras imported") is False
    for path, message in messages.items():
        assert message is not None, path
        assert message.startswith("TypeError: Could not locate class"), message[:300]
        assert "imported" in message  # Keras: "make sure they are all imported"
        assert "'module': 'cfkeras." in message, message[:300]
        assert "'registered_name': 'cfkeras>" in message, message[:300]
