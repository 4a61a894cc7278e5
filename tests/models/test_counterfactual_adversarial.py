"""Tests for `cfkeras.models.CounterfactualAdversarialModel` (CAT) on a tiny keras-hub BERT.

Expectations are recomputed by hand through the encoder's layers (CMIX), with
NumPy (CRM, Beta draws), or from the optimizers' counters (the schedule).
Most tests run without XLA (compiling the CAT step takes about a minute on
2 cores); one runs it under XLA.
"""

import json

import keras
import keras_hub
import numpy as np
import pytest

import cfkeras
from cfkeras.encoders import masked_mean_pool
from cfkeras.models.counterfactual_adversarial import (
    CAT_METRICS,
    default_mix_layers,
    sample_beta,
)

LENGTH = 8


def tiny_classifier(dropout=0.0, layers=3, seed=0):
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=50,
        num_layers=layers,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=LENGTH,
        dropout=dropout,
    )
    return cfkeras.encoders.encoder_classifier(backbone, num_classes=2, dropout=dropout)


def batch(n=8, seed=0):
    rng = np.random.default_rng(seed)
    mask = np.arange(LENGTH) < rng.integers(3, LENGTH + 1, (n, 1))
    x = {
        "token_ids": np.where(mask, rng.integers(1, 50, (n, LENGTH)), 0).astype("int32"),
        "segment_ids": np.zeros((n, LENGTH), "int32"),
        "padding_mask": mask,
    }
    return x, (np.arange(n) % 2).astype("int32")


def cat_model(model=None, compile_jit=False, erm_optimizer=None, **kwargs):
    model = model or tiny_classifier()
    cat = cfkeras.models.CounterfactualAdversarialModel(model, seed=0, **kwargs)
    cat.compile(
        optimizer=erm_optimizer or keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=compile_jit,
    )
    return cat


def draws(n=8, layer=2, seed=1):
    rng = np.random.default_rng(seed)
    return {
        "partners": np.roll(np.arange(n), 3).astype("int32"),
        "initial_lambda": rng.uniform(0.1, 0.9, n).astype("float32"),
        "layer": np.int32(layer),
    }


def softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# === Draws ===


@pytest.mark.parametrize("alpha, beta", [(0.3, 0.3), (2.0, 5.0)])
def test_beta_draws_have_the_beta_moments(alpha, beta):
    draws_ = np.asarray(sample_beta((40000,), alpha, beta, np.array([0, 7])))
    mean = alpha / (alpha + beta)
    variance = alpha * beta / ((alpha + beta) ** 2 * (alpha + beta + 1))
    assert np.all((draws_ >= 0) & (draws_ <= 1))
    assert abs(draws_.mean() - mean) < 4 * np.sqrt(variance / draws_.size)
    assert abs(draws_.var() - variance) < 0.05 * variance


def test_partners_are_a_permutation_without_fixed_points():
    cat = cat_model()
    shifts = []
    for step in range(300):
        partners = np.asarray(cat._partners(8, np.array([0, step])))
        assert sorted(partners) == list(range(8))
        assert np.all(partners != np.arange(8))
        shifts.append(int(partners[0]))
    # Every other example is a partner, about equally often (7 x ~43 draws),
    # and the draws are a function of the seed.
    counts = np.bincount(shifts, minlength=8)
    assert counts[0] == 0 and counts[1:].min() > 20, counts
    again = [int(np.asarray(cat._partners(8, np.array([0, step])))[0]) for step in range(20)]
    assert again == shifts[:20]


def test_default_mix_layers_scale_the_papers_choice_to_depth():
    assert default_mix_layers(12) == (8, 9, 10)
    assert default_mix_layers(6) == (4, 5)
    assert default_mix_layers(3) == (2,)


# === CMIX, CAL, CRM ===


@pytest.mark.parametrize("layer", [1, 2])
def test_cmix_is_a_convex_combination_at_the_drawn_layer_with_unmixed_labels(layer):
    cat = cat_model(use_cal=False, mix_layers=(1, 2))
    x, y = batch()
    d = draws(layer=layer)
    result = cat.counterfactual(x, y, training=False, draws=d)

    encoder, mask = cat.encoder, x["padding_mask"]
    x_j = {key: value[d["partners"]] for key, value in x.items()}
    h_i = encoder.run_layers(encoder.embed(x)[0], mask, 0, layer)
    h_j = encoder.run_layers(encoder.embed(x_j)[0], x_j["padding_mask"], 0, layer)
    lam = d["initial_lambda"][:, None, None]
    mixed = lam * np.asarray(h_j) + (1 - lam) * np.asarray(h_i)
    sequence = encoder.run_layers(mixed, mask, layer)  # x_i's padding mask
    logits = np.asarray(cat.head(masked_mean_pool(sequence, mask)))
    np.testing.assert_allclose(result["outputs"], logits, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(result["initial_lambda"], d["initial_lambda"])
    # CAT*: λ untouched; the objective uses x_i's own labels (never mixed).
    np.testing.assert_array_equal(result["lambda"], d["initial_lambda"])
    p = softmax(logits)
    ce = -np.log(p[np.arange(8), y])
    expected = -np.mean(d["initial_lambda"]) + 10 * ce.mean() + 20 * p.max(-1).mean()
    np.testing.assert_allclose(float(result["objective_before"]), expected, rtol=1e-4)
    assert float(result["objective_after"]) == float(result["objective_before"])


def test_cal_raises_its_objective_and_keeps_lambda_in_the_unit_interval():
    cat = cat_model(use_cal=True, mix_layers=(1, 2))
    x, y = batch()
    result = cat.counterfactual(x, y, training=False, draws=draws())
    assert float(result["objective_after"]) > float(result["objective_before"])
    lam = np.asarray(result["lambda"])
    assert np.all((lam >= 0) & (lam <= 1))
    assert not np.allclose(lam, draws()["initial_lambda"])
    # Three steps of 2e-2: λ moves at most 3 * 2e-2 * |dJ/dλ| from its draw.
    more = cat_model(use_cal=True, mix_layers=(1, 2), cal_steps=6)
    more.model.set_weights(cat.model.get_weights())
    longer = more.counterfactual(x, y, training=False, draws=draws())
    assert float(longer["objective_after"]) >= float(result["objective_after"]) - 1e-4


def test_the_extra_forward_passes_run_with_dropout_in_training_mode():
    cat = cat_model(model=tiny_classifier(dropout=0.5), use_cal=False)
    x, y = batch()
    first = cat.counterfactual(x, y, training=True, draws=draws())["outputs"]
    second = cat.counterfactual(x, y, training=True, draws=draws())["outputs"]
    assert not np.allclose(first, second)
    inference = [
        cat.counterfactual(x, y, training=False, draws=draws())["outputs"] for _ in range(2)
    ]
    np.testing.assert_allclose(inference[0], inference[1], rtol=1e-6)


def test_crm_weights_follow_the_formula_and_respect_the_clip():
    cat = cat_model(crm_clip=(0.9, 1.1))
    x, y = batch()
    rng = np.random.default_rng(3)
    counterfactual_logits = rng.normal(scale=3.0, size=(8, 2)).astype("float32")
    loss, stats = cat.crm_loss(x, y, counterfactual_logits, training=False)
    p = softmax(cat.model(x, training=False))
    omega = p.max(-1) / softmax(counterfactual_logits).max(-1)
    weight = np.clip(omega, 0.9, 1.1)
    assert np.any(omega < 0.9) or np.any(omega > 1.1)
    ce = -np.log(p[np.arange(8), y])
    np.testing.assert_allclose(float(loss), np.mean(weight * ce), rtol=1e-5)
    np.testing.assert_allclose(float(stats["crm_weight"]), weight.mean(), rtol=1e-5)
    clipped = np.mean((omega < 0.9) | (omega > 1.1))
    np.testing.assert_allclose(float(stats["crm_clipped"]), clipped)


# === Schedule and optimizers ===


def test_warmup_then_one_crm_and_one_erm_update_per_batch():
    cat = cat_model(warmup_epochs=1)
    x, y = batch(16)
    history = cat.fit(
        x, y, batch_size=8, epochs=3, shuffle=False, verbose=0, validation_data=(x, y)
    ).history
    assert int(cat.optimizer.iterations) == 6  # ERM: every batch
    assert int(cat.crm_optimizer.iterations) == 4  # CRM: after the warm-up epoch
    assert len(history["loss"]) == 3
    for name in CAT_METRICS:
        assert len(history[name]) == 2, name  # logged from the first CAT epoch on
    # Validation: the ERM figures only, never CAT's training statistics.
    assert {"val_loss", "val_main_loss", "val_accuracy"} <= set(history)
    assert not any(key.startswith("val_") and key[4:] in CAT_METRICS for key in history)
    assert cat.crm_optimizer.learning_rate.numpy() == pytest.approx(2e-5)
    assert type(cat.crm_optimizer).__name__ == "AdamW"


def test_crm_uses_its_own_learning_rate():
    x, y = batch(8)
    deltas = {}
    for rate in (0.05, 0.1):
        model = tiny_classifier(seed=0, layers=2)
        before = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
        cat = cat_model(
            model=model,
            warmup_epochs=0,
            use_cal=False,
            mix_layers=(1,),
            crm_optimizer=keras.optimizers.SGD(rate),
            erm_optimizer=keras.optimizers.SGD(0.0),
        )
        cat.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        deltas[rate] = [
            keras.ops.convert_to_numpy(w) - b for w, b in zip(model.trainable_weights, before)
        ]
    # The ERM optimizer's rate is 0: every change is CRM's, linear in its rate.
    moved = [k for k, d in enumerate(deltas[0.05]) if np.any(d != 0)]
    assert moved
    for k in moved:
        np.testing.assert_allclose(deltas[0.1][k], 2 * deltas[0.05][k], rtol=1e-3, atol=1e-7)


def test_the_cat_step_compiles_under_xla():
    x, y = batch(8)
    cat = cat_model(model=tiny_classifier(layers=2), compile_jit=True, warmup_epochs=0)
    logs = cat.fit(x, y, batch_size=8, epochs=1, verbose=0).history
    assert np.isfinite(logs["crm_loss"][0]) and np.isfinite(logs["loss"][0])
    assert logs["cal_objective_after"][0] > logs["cal_objective_before"][0]
    assert cat.jit_compile is True


# === Errors and config ===


def test_bad_settings_are_named():
    model = tiny_classifier()
    with pytest.raises(ValueError, match="mix_layers"):
        cfkeras.models.CounterfactualAdversarialModel(model, mix_layers=(0, 4))
    with pytest.raises(ValueError, match="crm_clip"):
        cfkeras.models.CounterfactualAdversarialModel(model, crm_clip=(2.0, 1.0))
    with pytest.raises(ValueError, match="LayerwiseEncoder"):
        cfkeras.models.CounterfactualAdversarialModel(model, encoder_layer="pooled")


def test_config_json_and_keras_file_round_trip(tmp_path):
    cat = cat_model(mix_layers=(1, 2), use_cal=False, gamma=5.0, warmup_epochs=2)
    x, y = batch()
    config = json.loads(json.dumps(cat.get_config()))
    restored = cfkeras.models.CounterfactualAdversarialModel.from_config(config)
    for key in ("mix_layers", "use_cal", "gamma", "warmup_epochs", "crm_clip", "alpha"):
        assert getattr(restored, key) == getattr(cat, key), key
    path = tmp_path / "cat.keras"
    cat.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, cfkeras.models.CounterfactualAdversarialModel)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), cat.predict(x, verbose=0), rtol=1e-5)


# === Cached lower layers ===


def cached_twin(full, start_layer):
    """A cached-lower-layers classifier sharing `full`'s backbone and head weights."""
    backbone = full.get_layer("encoder").backbone
    cached = cfkeras.encoders.encoder_classifier(
        backbone, num_classes=2, dropout=0.0, start_layer=start_layer
    )
    for name in ("head_hidden", "logits"):
        cached.get_layer(name).set_weights(full.get_layer(name).get_weights())
    return cached


@pytest.mark.parametrize("layer", [1, 2])
def test_cached_mode_mixes_the_same_states_as_full_fine_tuning(layer):
    full = cat_model(use_cal=True, mix_layers=(1, 2))
    cached = cat_model(model=cached_twin(full.model, 1), use_cal=True, mix_layers=(1, 2))
    x, y = batch()
    states = cfkeras.encoders.cached_hidden_states(full.encoder.backbone, x, 1, batch_size=3)
    expected = full.counterfactual(x, y, training=False, draws=draws(layer=layer))
    result = cached.counterfactual(states, y, training=False, draws=draws(layer=layer))
    for key in ("outputs", "lambda", "objective_before", "objective_after"):
        np.testing.assert_allclose(result[key], expected[key], rtol=1e-4, atol=1e-5)


def test_cached_mode_trains_only_the_layers_above_the_cache():
    full = tiny_classifier(layers=3)
    backbone = full.get_layer("encoder").backbone
    lower = [w for layer in backbone.transformer_layers[:2] for w in layer.weights]
    lower += backbone.get_layer("token_embedding").weights
    cat = cat_model(model=cached_twin(full, 2), warmup_epochs=0, mix_layers=(2, 3))
    trainable = {id(w) for w in cat.trainable_weights}
    assert not any(id(w) in trainable for w in lower)
    upper = backbone.transformer_layers[2].weights
    assert all(id(w) in trainable for w in upper)
    x, y = batch(16)
    states = cfkeras.encoders.cached_hidden_states(backbone, x, 2)
    assert states["hidden_states"].shape == (16, LENGTH, 16)
    before = [keras.ops.convert_to_numpy(w) for w in lower + upper]
    logs = cat.fit(states, y, batch_size=8, epochs=1, shuffle=False, verbose=0).history
    assert np.isfinite(logs["crm_loss"][0])
    after = [keras.ops.convert_to_numpy(w) for w in lower + upper]
    assert all(np.array_equal(b, a) for b, a in zip(before[: len(lower)], after[: len(lower)]))
    assert any(not np.array_equal(b, a) for b, a in zip(before[len(lower) :], after[len(lower) :]))


def test_cached_mode_settings_are_checked():
    full = tiny_classifier(layers=3)
    cached = cached_twin(full, 2)
    with pytest.raises(ValueError, match="start_layer=2"):
        cfkeras.models.CounterfactualAdversarialModel(cached, mix_layers=(1, 2))
    backbone = full.get_layer("encoder").backbone
    x, _ = batch()
    for bad in (0, 3):
        with pytest.raises(ValueError, match="start_layer must be in 1 .. 2"):
            cfkeras.encoders.cached_hidden_states(backbone, x, bad)
    with pytest.raises(ValueError, match="hidden_states"):
        cached.get_layer("encoder").embed(x)
