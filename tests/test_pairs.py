"""Tests for `cfkeras.pairs`: validation, builders, the `tf.data` views, and the
errors a `GradientSupervisionModel` raises on data that is not paired."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import cfkeras
from cfkeras.pairs import Pairs, make_pair, map_inputs


def _pairs(n=8, d=3, seed=0):
    """`n` pairs whose pair id is encoded in the inputs: x_i[:, 0] = id, x_j[:, 0] = id + 1000."""
    rng = np.random.default_rng(seed)
    ids = np.arange(n, dtype="float32")
    x = rng.normal(size=(n, d)).astype("float32")
    x[:, 0] = ids
    x_cf = x.copy()
    x_cf[:, 0] = ids + 1000
    y = (np.arange(n) % 2).astype("float32")
    return Pairs(x, x_cf, y, 1 - y)


def _epoch(dataset):
    """Every batch of one pass over a paired dataset, as numpy."""
    return [keras.tree.map_structure(lambda t: t.numpy(), batch) for batch in dataset]


# === Validation ===


def _arrays(n=4, d=3):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, d)).astype("float32")
    y = np.zeros(n, "float32")
    return x, x + 1, y, 1 - y


def test_valid_pairs_do_not_warn():
    x, x_cf, y, y_cf = _arrays()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pairs = Pairs(x, x_cf, y, y_cf)
    assert len(pairs) == 4
    assert not pairs.equal_label_mask().any()


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda x, xc, y, yc: (x, xc[:, :2], y, yc), r"shapes differ, \(3,\) vs \(2,\)"),
        (lambda x, xc, y, yc: (x, xc.astype("float64"), y, yc), "dtypes differ"),
        (
            lambda x, xc, y, yc: (x, xc, y[:, None], np.ones((4, 3), "float32")),
            r"labels: original and counterfactual shapes differ, \(1,\) vs \(3,\)",
        ),
        (
            lambda x, xc, y, yc: (x, xc[:3], y, yc),
            "counterfactual member has 3 examples, expected 4",
        ),
        (lambda x, xc, y, yc: (x[:3], xc, y, yc), "original member has 3 examples, expected 4"),
        (lambda x, xc, y, yc: (x, xc, y, yc[:3]), "counterfactual member has 3 examples"),
        (lambda x, xc, y, yc: (x[:0], xc[:0], y[:0], yc[:0]), r"empty \(0 pairs\)"),
        (
            lambda x, xc, y, yc: (np.where(np.eye(4, 3) > 0, np.nan, x), xc, y, yc),
            "original member contains NaN or Inf",
        ),
        (
            lambda x, xc, y, yc: (x, np.where(np.eye(4, 3) > 0, np.inf, xc), y, yc),
            "counterfactual member contains NaN or Inf",
        ),
        (lambda x, xc, y, yc: (x, xc, y, y), "every pair has equal labels"),
    ],
    ids=[
        "shapes",
        "dtypes",
        "label-arity",
        "n-counterfactual",
        "n-original",
        "n-labels",
        "empty",
        "nan",
        "inf",
        "all-equal-labels",
    ],
)
def test_validation_errors(change, match):
    with pytest.raises(ValueError, match=match):
        Pairs(*change(*_arrays()))


def test_structure_mismatch_and_bad_sample_weight():
    x, x_cf, y, y_cf = _arrays()
    with pytest.raises(ValueError, match="differ in structure"):
        Pairs({"premise": x, "hypothesis": x}, {"premise": x_cf}, y, y_cf)
    with pytest.raises(ValueError, match="sample_weight has 3 entries for 4 pairs"):
        Pairs(x, x_cf, y, y_cf, sample_weight=np.ones(3))
    with pytest.raises(ValueError, match="finite and non-negative"):
        Pairs(x, x_cf, y, y_cf, sample_weight=np.array([1.0, -1.0, 1.0, 1.0]))


def test_warns_when_some_labels_equal():
    x, x_cf, y, y_cf = _arrays()
    y_cf = y_cf.copy()
    y_cf[:3] = y[:3]
    with pytest.warns(UserWarning, match="3 of 4 pairs have equal labels") as record:
        pairs = Pairs(x, x_cf, y, y_cf)
    assert record[0].filename == __file__  # points at the caller
    np.testing.assert_array_equal(pairs.equal_label_mask(), [True, True, True, False])


# === from_groups ===


def test_from_groups_first_member_is_original_non_contiguous():
    # Group 7: rows 0, 2, 6; group 3: rows 1, 4; group 5: rows 3, 5 (ids unsorted on purpose).
    group_ids = np.array([7, 3, 7, 5, 3, 5, 7])
    inputs = np.arange(7, dtype="float32")[:, None] * np.ones((1, 2), "float32")
    labels = np.array([0, 1, 1, 0, 0, 1, 1])
    weights = np.arange(7, dtype="float32") + 1
    pairs = Pairs.from_groups(inputs, labels, group_ids, sample_weight=weights)

    # k - 1 pairs per group, in order of first appearance, originals = first members.
    assert len(pairs) == 4
    np.testing.assert_array_equal(pairs.original[:, 0], [0, 0, 1, 3])
    np.testing.assert_array_equal(pairs.counterfactual[:, 0], [2, 6, 4, 5])
    np.testing.assert_array_equal(pairs.label, [0, 0, 1, 0])
    np.testing.assert_array_equal(pairs.counterfactual_label, [1, 1, 0, 1])
    np.testing.assert_array_equal(pairs.group_id, [7, 7, 3, 5])
    # A pair takes the weight of its counterfactual member.
    np.testing.assert_array_equal(pairs.sample_weight, [3, 7, 5, 6])


def test_from_groups_text_and_dict_inputs():
    text = np.array(["a good film", "a bad film", "fine", "not fine"])
    pairs = Pairs.from_groups(
        {"premise": text, "hypothesis": text[::-1].copy()}, [1, 0, 1, 0], ["g1", "g1", "g2", "g2"]
    )
    assert list(pairs.original["premise"]) == ["a good film", "fine"]
    assert list(pairs.counterfactual["premise"]) == ["a bad film", "not fine"]
    assert list(pairs.counterfactual["hypothesis"]) == ["fine", "a good film"]


def test_from_groups_single_member_group_names_the_id():
    with pytest.raises(ValueError, match=r"single member.*group id 'lonely'"):
        Pairs.from_groups(np.zeros((3, 2)), [0, 1, 0], ["g", "g", "lonely"])
    with pytest.raises(ValueError, match="empty"):
        Pairs.from_groups(np.zeros((0, 2)), [], [])
    with pytest.raises(ValueError, match="3 labels for 2 group ids"):
        Pairs.from_groups(np.zeros((2, 2)), [0, 1, 0], ["g", "g"])


# === to_dataset ===


def _check_batch_is_paired(batch):
    x, y = batch
    ids = x["original"][:, 0]
    np.testing.assert_array_equal(x["counterfactual"][:, 0], ids + 1000)
    np.testing.assert_array_equal(y["original"], ids % 2)
    np.testing.assert_array_equal(y["counterfactual"], 1 - ids % 2)
    return ids


def test_to_dataset_keeps_pairs_together_and_reshuffles_each_epoch():
    pairs = _pairs(n=24)
    dataset = pairs.to_dataset(batch_size=8, seed=3)
    epochs = [
        np.concatenate([_check_batch_is_paired(b) for b in _epoch(dataset)]) for _ in range(3)
    ]
    for ids in epochs:
        np.testing.assert_array_equal(np.sort(ids), np.arange(24))
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
    assert not np.array_equal(epochs[0], np.arange(24))
    # The same seed gives the same sequence of epochs.
    again = pairs.to_dataset(batch_size=8, seed=3)
    for ids in epochs[:2]:
        np.testing.assert_array_equal(
            np.concatenate([b[0]["original"][:, 0] for b in _epoch(again)]), ids
        )


def test_to_dataset_with_sample_weight_keeps_weight_with_its_pair():
    pairs = _pairs(n=12)
    weighted = Pairs(
        pairs.original,
        pairs.counterfactual,
        pairs.label,
        pairs.counterfactual_label,
        sample_weight=np.arange(12, dtype="float32") / 10,
    )
    for x, y, weight in _epoch(weighted.to_dataset(batch_size=4, seed=0)):
        _check_batch_is_paired((x, y))
        np.testing.assert_allclose(weight, x["original"][:, 0] / 10)


def test_to_dataset_drop_remainder_defaults():
    x = np.zeros((488, 2), "float32")
    x[:, 0] = np.arange(488)
    y = np.zeros(488, "float32")
    pairs = Pairs(x, x + 1, y, 1 - y)

    evaluation = pairs.to_dataset(batch_size=32, shuffle=False)
    sizes = [len(b[1]["original"]) for b in _epoch(evaluation)]
    assert len(sizes) == 16 and sizes[:15] == [32] * 15 and sizes[-1] == 8
    ids = np.concatenate([b[0]["original"][:, 0] for b in _epoch(evaluation)])
    np.testing.assert_array_equal(ids, np.arange(488))  # every pair, in order

    training = pairs.to_dataset(batch_size=32, seed=0)
    assert training.element_spec[0]["original"].shape[0] == 32  # static: one XLA trace
    sizes = [len(b[1]["original"]) for b in _epoch(training)]
    assert sizes == [32] * 15

    kept = pairs.to_dataset(batch_size=32, seed=0, drop_remainder=False)
    assert sum(len(b[1]["original"]) for b in _epoch(kept)) == 488
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        pairs.to_dataset(batch_size=0)


# === flatten ===


def test_flatten_yields_2n_independent_examples():
    pairs = _pairs(n=10)
    batches = _epoch(pairs.flatten(batch_size=5, shuffle=False))
    assert all(not isinstance(x, dict) for x, _ in batches)
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    np.testing.assert_array_equal(x, np.concatenate([pairs.original, pairs.counterfactual]))
    np.testing.assert_array_equal(y, np.concatenate([pairs.label, pairs.counterfactual_label]))

    shuffled = _epoch(pairs.flatten(batch_size=5, seed=1))
    x = np.concatenate([b[0] for b in shuffled])
    y = np.concatenate([b[1] for b in shuffled])
    assert len(x) == 20
    np.testing.assert_array_equal(
        np.sort(x[:, 0]), np.sort(np.r_[np.arange(10), np.arange(10) + 1000])
    )
    # Each example keeps its own label: originals id % 2, counterfactuals 1 - id % 2.
    ids = x[:, 0] % 1000
    np.testing.assert_array_equal(y, np.where(x[:, 0] >= 1000, 1 - ids % 2, ids % 2))

    # Members are independent examples: some batch holds a member without its partner.
    def split(batch):
        ids = batch[0][:, 0]
        return set(ids[ids < 1000]), set(ids[ids >= 1000] - 1000)

    assert any(a != b for a, b in map(split, shuffled))


# === random_relations ===


def _relations(dataset):
    """`(example id, partner id, label, partner label)` rows of one epoch."""
    rows = []
    for x, y in dataset:
        rows.append(
            np.stack(
                [
                    x["original"][:, 0].numpy(),
                    x["counterfactual"][:, 0].numpy(),
                    y["original"].numpy(),
                    y["counterfactual"].numpy(),
                ],
                1,
            )
        )
    return np.concatenate(rows)


def _pool_pairs(n=10):
    """Pairs whose 2n members have distinct ids (column 0) and 3 classes: label = id % 3."""
    x = np.zeros((n, 2), "float32")
    x[:, 0] = np.arange(n)
    x_cf = x.copy()
    x_cf[:, 0] += n
    label = np.arange(n) % 3
    return Pairs(x, x_cf, label, (np.arange(n) + n) % 3)


@pytest.mark.parametrize("partners", ["any", "different_label"])
def test_random_relations(partners):
    pairs = _pool_pairs()
    dataset = pairs.random_relations(batch_size=5, partners=partners, seed=4)
    assert len(list(pairs.random_relations(batch_size=3, seed=4))) == 3  # drops the remainder
    first, second = _relations(dataset), _relations(dataset)
    for rows in (first, second):
        # Every member of the pool is in exactly one pair per epoch.
        assert len(rows) == 10
        np.testing.assert_array_equal(np.sort(rows[:, :2].reshape(-1)), np.arange(20))
        # Labels travel with their examples.
        np.testing.assert_array_equal(rows[:, 2], rows[:, 0] % 3)
        np.testing.assert_array_equal(rows[:, 3], rows[:, 1] % 3)
        assert np.all(rows[:, 0] != rows[:, 1])  # never paired with itself
        if partners == "different_label":
            assert np.all(rows[:, 2] != rows[:, 3])
    # Re-drawn every epoch ...
    partner = lambda rows: dict(zip(rows[:, 0], rows[:, 1]))  # noqa: E731
    assert partner(first) != partner(second)
    # ... and reproducible for the same seed.
    again = pairs.random_relations(batch_size=5, partners=partners, seed=4)
    np.testing.assert_array_equal(_relations(again), first)
    np.testing.assert_array_equal(_relations(again), second)


def test_random_relations_any_draws_equal_labels_too():
    rows = np.concatenate(
        [_relations(_pool_pairs().random_relations(batch_size=5, seed=s)) for s in range(3)]
    )
    assert np.any(rows[:, 2] == rows[:, 3]) and np.any(rows[:, 2] != rows[:, 3])


def test_random_relations_binary_matching_is_oriented_at_random_and_weighted():
    # IMDb-like: every pair flips a binary label, so the pool is balanced.
    n = 32
    x = np.arange(n, dtype="float32")[:, None]
    label = np.arange(n) % 2
    weight = np.arange(n, dtype="float32") + 1.0
    pairs = Pairs(x, x + n, label, 1 - label, sample_weight=weight)
    first_labels = []
    for features, labels, pair_weight in pairs.random_relations(8, "different_label", seed=1):
        a, b = labels["original"].numpy(), labels["counterfactual"].numpy()
        assert np.all(a != b)
        first_labels.extend(a)
        ids = np.stack([features["original"][:, 0], features["counterfactual"][:, 0]], 1)
        member_weight = np.where(ids < n, ids + 1, ids - n + 1)  # the cf shares its pair's weight
        np.testing.assert_allclose(pair_weight["original"].numpy(), member_weight[:, 0])
        np.testing.assert_allclose(pair_weight["counterfactual"].numpy(), member_weight[:, 1])
    # Both labels come first: the orientation is random.
    assert 0 < np.mean(first_labels) < 1


def test_random_relations_errors():
    pairs = _pool_pairs()
    with pytest.raises(ValueError, match="partners must be one of"):
        pairs.random_relations(partners="nearest")


# === EpochSeed: orders as functions of (seed, epoch) ===


def _orders(make, epochs=(0, 1, 2, 1)):
    """One epoch of `make(seed)` per listed epoch, each read from a new EpochSeed(7)."""
    out = []
    for epoch in epochs:
        seed = cfkeras.pairs.EpochSeed(7)
        seed.set_epoch(epoch)
        out.append(make(seed))
    return out


@pytest.mark.parametrize(
    "view",
    [
        lambda p, s: np.concatenate(
            [b[0]["original"][:, 0] for b in _epoch(p.to_dataset(4, seed=s))]
        ),
        lambda p, s: np.concatenate([b[0][:, 0] for b in _epoch(p.flatten(4, seed=s))]),
        lambda p, s: _relations(p.random_relations(5, seed=s)),
        lambda p, s: _relations(p.random_relations(5, "different_label", seed=s)),
    ],
    ids=["to_dataset", "flatten", "random_relations", "random_relations_different_label"],
)
def test_epoch_seed_makes_every_order_a_function_of_seed_and_epoch(view):
    pairs = _pool_pairs()
    # A fresh EpochSeed (as in a resumed process) at epoch 1 gives epoch 1's
    # order again; other epochs differ.
    first, second, third, second_again = _orders(lambda seed: view(pairs, seed))
    np.testing.assert_array_equal(second_again, second)
    assert not np.array_equal(first, second) and not np.array_equal(second, third)


@pytest.mark.parametrize("steps_per_epoch", [None, 2])
def test_epoch_seed_follows_the_epochs_of_fit_as_a_callback(steps_per_epoch):
    # With steps_per_epoch, Keras makes the next epoch's iterator at the end
    # of the previous epoch: the epoch is read when it yields, not then.
    pairs = _pool_pairs()
    seed = cfkeras.pairs.EpochSeed(7)
    trained = []

    def record(x, y):
        # The ids of the examples each training batch holds, as fit reads them.
        ids = tf.concat([x["original"][:, 0], x["counterfactual"][:, 0]], 0)
        tf.py_function(lambda t: trained.append(t.numpy().tolist()), [ids], [])
        return x, y

    dataset = pairs.random_relations(5, seed=seed).map(record)
    inputs = keras.Input((2,))
    hidden = keras.layers.Dense(4, activation="tanh", name="hidden")(inputs)
    gs = cfkeras.GradientSupervisionModel(
        keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(hidden)), gs_layer="hidden"
    )
    gs.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", jit_compile=False)
    keras.utils.set_random_seed(0)
    gs.fit(
        dataset,
        epochs=4,
        initial_epoch=1,
        steps_per_epoch=steps_per_epoch,
        callbacks=[seed],
        verbose=0,
    )
    # Epochs 1, 2 and 3, each in the order a fresh process draws for it.
    expected = []
    for epoch in (1, 2, 3):
        (rows,) = _orders(lambda s: _relations(pairs.random_relations(5, seed=s)), epochs=(epoch,))
        expected += [
            np.concatenate([rows[k : k + 5, 0], rows[k : k + 5, 1]]).tolist() for k in (0, 5)
        ]
    assert trained == expected


def test_the_seed_must_be_an_int_an_epoch_seed_or_none():
    with pytest.raises(ValueError, match="EpochSeed"):
        _pairs().to_dataset(4, seed=1.5)


# === Multi-input and text ===


def _nli_pairs(n=8, d=3, offset=1000.0):
    """Premise/hypothesis pairs; the pair id is in premise[:, 0] (a multiple of 1/8)."""
    rng = np.random.default_rng(2)
    premise = rng.normal(size=(n, d)).astype("float32")
    hypothesis = rng.normal(size=(n, d)).astype("float32")
    premise[:, 0] = np.arange(n) / 8
    label = np.arange(n) % 3
    return Pairs(
        {"premise": premise, "hypothesis": hypothesis},
        {"premise": premise + offset, "hypothesis": -hypothesis},
        label,
        (label + 1) % 3,
    )


def test_multi_input_dict_pairs_stay_together():
    pairs = _nli_pairs()
    for x, y in _epoch(pairs.to_dataset(batch_size=4, seed=0)):
        assert set(x) == {"original", "counterfactual"}
        assert set(x["original"]) == {"premise", "hypothesis"}
        np.testing.assert_array_equal(
            x["counterfactual"]["premise"], x["original"]["premise"] + 1000
        )
        np.testing.assert_array_equal(
            x["counterfactual"]["hypothesis"], -x["original"]["hypothesis"]
        )
        np.testing.assert_array_equal(y["original"], (x["original"]["premise"][:, 0] * 8) % 3)


def test_multi_input_model_with_gs_on_concatenation():
    keras.utils.set_random_seed(0)
    premise = keras.Input((3,), name="premise")
    hypothesis = keras.Input((3,), name="hypothesis")
    joint = keras.layers.Concatenate(name="joint")([premise, hypothesis])
    hidden = keras.layers.Dense(4, activation="tanh")(joint)
    outputs = keras.layers.Dense(3, activation="softmax")(hidden)
    model = keras.Model({"premise": premise, "hypothesis": hypothesis}, outputs)
    gs = cfkeras.GradientSupervisionModel(model, gs_layer="joint")
    gs.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    pairs = _nli_pairs(offset=0.5)

    x = make_pair(pairs.original, pairs.counterfactual)
    y = make_pair(pairs.label, pairs.counterfactual_label)
    total, stats = gs.compute_pair_losses(x, y)
    assert np.isfinite(float(total))
    assert float(np.sum(stats["gs_supervised"])) == 16  # every point, both directions
    # The GS space is the concatenation: 6 features.
    assert gs.encoder.output.shape == (None, 6)

    history = gs.fit(pairs.to_dataset(batch_size=4, seed=0), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert history.history["gs_supervised"][0] == 1.0


def test_map_inputs_with_text_vectorization():
    text = np.array(
        ["good film", "bad film", "great plot", "awful plot", "fine acting", "poor acting"]
    )
    label = np.array([1, 0, 1, 0, 1, 0], "float32")
    pairs = Pairs.from_groups(text, label, [0, 0, 1, 1, 2, 2])
    vectorizer = keras.layers.TextVectorization(output_sequence_length=4)
    vectorizer.adapt(text)

    dataset = map_inputs(pairs.to_dataset(batch_size=3, shuffle=False), vectorizer)
    ((x, y),) = _epoch(dataset)
    np.testing.assert_array_equal(x["original"], vectorizer(pairs.original).numpy())
    np.testing.assert_array_equal(x["counterfactual"], vectorizer(pairs.counterfactual).numpy())
    assert not np.array_equal(x["original"], x["counterfactual"])
    np.testing.assert_array_equal(y["counterfactual"], [0, 0, 0])
    # Unpaired data is mapped directly.
    (plain,) = _epoch(map_inputs(tf.data.Dataset.from_tensors(text[:2]), vectorizer))
    np.testing.assert_array_equal(plain[0], vectorizer(text[:2]).numpy())

    keras.utils.set_random_seed(0)
    model = cfkeras.models.bag_of_embeddings_classifier(
        vectorizer.vocabulary_size(), 4, sequence_length=4
    )
    gs = cfkeras.GradientSupervisionModel(model, gs_layer="mean_embedding")
    gs.compile(optimizer="sgd", loss="binary_crossentropy")
    history = gs.fit(dataset, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert history.history["gs_supervised"][0] == 1.0


# === Model-level errors on data that is not paired ===


def _tiny_gs():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(4, activation="relu", name="hidden"),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    gs = cfkeras.GradientSupervisionModel(model, gs_layer="hidden")
    gs.compile(optimizer="sgd", loss="binary_crossentropy", jit_compile=False)
    return gs


def test_unpaired_data_trains_the_main_loss_only():
    # Unpaired (x, y) is the augmentation baseline through the same step: no
    # error, and no GS figures.
    x, _, y, _ = _arrays()
    history = _tiny_gs().fit(x, y, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][0])
    assert history["loss"] == history["main_loss"]
    assert "gs_loss" not in history and "gs_supervised" not in history


def test_unpaired_x_with_paired_y_raises():
    x, _, y, y_cf = _arrays()
    with pytest.raises(ValueError, match="Paired labels need paired inputs"):
        _tiny_gs().fit(tf.data.Dataset.from_tensors((x, make_pair(y, y_cf))), epochs=1, verbose=0)


def test_paired_x_with_unpaired_y_raises():
    x, x_cf, y, _ = _arrays()
    gs = _tiny_gs()
    with pytest.raises(ValueError, match="paired labels"):
        gs.fit(tf.data.Dataset.from_tensors((make_pair(x, x_cf), y)), epochs=1, verbose=0)
    with pytest.raises(ValueError, match="paired labels"):
        gs.compute_pair_losses(make_pair(x, x_cf), y)


def test_mismatched_members_inside_the_step_raise():
    x, x_cf, y, y_cf = _arrays()
    gs = _tiny_gs()
    bad_x = tf.data.Dataset.from_tensors((make_pair(x, x_cf[:, :2]), make_pair(y, y_cf)))
    with pytest.raises(ValueError, match="same shape and dtype"):
        gs.fit(bad_x, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="labels of a pair must have the same shape"):
        gs.compute_pair_losses(make_pair(x, x_cf), make_pair(y, np.ones((4, 3), "float32")))
    with pytest.raises(ValueError, match="inputs of a pair differ in structure"):
        gs.compute_pair_losses(make_pair(x, {"a": x_cf}), make_pair(y, y_cf))


def test_per_member_sample_weights():
    x, x_cf, y, y_cf = _arrays()
    gs = _tiny_gs()
    px, py = make_pair(x, x_cf), make_pair(y, y_cf)
    w = np.array([1.0, 2.0, 0.5, 3.0], "float32")
    # Equal member weights are the per-pair weight.
    total, stats = gs.compute_pair_losses(px, py, w)
    total_m, stats_m = gs.compute_pair_losses(px, py, make_pair(w, w))
    np.testing.assert_allclose(total_m, total, rtol=1e-6)
    np.testing.assert_allclose(stats_m["gs_loss"], stats["gs_loss"], rtol=1e-6)
    # Zero weight on the originals: the main loss is over the counterfactuals
    # alone, and only their GS rows count.
    zero = np.zeros(4, "float32")
    _, stats = gs.compute_pair_losses(px, py, make_pair(zero, w))
    p = np.clip(gs.predict(x_cf, verbose=0)[:, 0], 1e-7, 1 - 1e-7)
    bce = -(y_cf * np.log(p) + (1 - y_cf) * np.log(1 - p))
    # Keras's "sum_over_batch_size": the weighted sum over all 2n rows / 2n.
    np.testing.assert_allclose(stats["main_loss"], np.sum(w * bce) / 8, rtol=1e-5)
    np.testing.assert_allclose(stats["gs_loss"][1], w.sum(), rtol=1e-6)
    np.testing.assert_array_equal(stats["gs_supervised"], [0, 0, 0, 0, 1, 1, 1, 1])
    # Pairs carry per-member weights into every view.
    pairs = Pairs(x, x_cf, y, y_cf, sample_weight=make_pair(zero, w))
    _, _, weight = next(iter(pairs.to_dataset(batch_size=4, shuffle=False)))
    np.testing.assert_array_equal(weight["counterfactual"], w)
    _, _, flat_weight = next(iter(pairs.flatten(batch_size=8, shuffle=False)))
    np.testing.assert_array_equal(flat_weight, np.concatenate([zero, w]))
    with pytest.raises(ValueError, match="one weight per pair or a pair"):
        Pairs(x, x_cf, y, y_cf, sample_weight={"original": w})


# === with_singles: a few pairs and many single examples a batch ===


def _few_pairs_and_singles(n_pairs=6, n_singles=20):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n_pairs, 3)).astype("float32")
    pairs = Pairs(x, x + 1.0, np.zeros(n_pairs, "float32"), np.ones(n_pairs, "float32"))
    singles = rng.normal(size=(n_singles, 3)).astype("float32") + 10.0  # told apart by value
    return pairs, singles, (np.arange(n_singles) % 2).astype("float32")


def test_with_singles_batches_mix_pairs_and_every_single_once_an_epoch():
    pairs, singles, labels = _few_pairs_and_singles()
    dataset = pairs.with_singles(singles, labels, pairs_per_batch=2, singles_per_batch=5, seed=3)
    assert int(dataset.cardinality()) == 4
    epochs = [list(dataset), list(dataset)]
    for batches in epochs:
        seen = []
        for x, y, w in batches:
            x_i, x_j = x["original"].numpy(), x["counterfactual"].numpy()
            w_i, w_j = w["original"].numpy(), w["counterfactual"].numpy()
            assert x_i.shape == (7, 3)
            # Two real pairs (labels 0 -> 1), then five singles carried as (x, x).
            np.testing.assert_array_equal(x_j[:2], x_i[:2] + 1.0)
            assert (y["counterfactual"].numpy()[:2] == 1).all()
            np.testing.assert_array_equal(x_j[2:], x_i[2:])
            np.testing.assert_array_equal(
                y["counterfactual"].numpy()[2:], y["original"].numpy()[2:]
            )
            # The duplicate weighs 0; the 9 real examples share the 14 rows' total.
            np.testing.assert_allclose(w_j[2:], 0.0)
            np.testing.assert_allclose(np.concatenate([w_i, w_j]).mean(), 1.0, rtol=1e-6)
            np.testing.assert_allclose(w_i, 14 / 9, rtol=1e-6)
            seen += [tuple(row) for row in x_i[2:]]
        assert sorted(seen) == sorted(tuple(row) for row in singles)  # each single once
    first = lambda batches: np.concatenate([b[0]["original"].numpy() for b in batches])  # noqa: E731
    assert not np.array_equal(first(epochs[0]), first(epochs[1]))  # re-shuffled every epoch
    again = pairs.with_singles(singles, labels, pairs_per_batch=2, singles_per_batch=5, seed=3)
    np.testing.assert_array_equal(first(list(again)), first(epochs[0]))  # the seed fixes it


def test_with_singles_main_loss_is_the_mean_over_real_examples_and_gs_sees_the_pairs():
    pairs, singles, labels = _few_pairs_and_singles()
    dataset = pairs.with_singles(singles, labels, pairs_per_batch=2, singles_per_batch=5, seed=0)
    x, y, w = next(iter(dataset))
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, activation="sigmoid")])
    gs = cfkeras.GradientSupervisionModel(model, gs_weight=1.0)
    gs.compile(loss="binary_crossentropy")
    _, stats = gs.compute_pair_losses(x, y, w)
    real = np.concatenate([x["original"].numpy(), x["counterfactual"].numpy()[:2]])
    targets = np.concatenate([y["original"].numpy(), y["counterfactual"].numpy()[:2]])
    p = np.clip(model.predict(real, verbose=0)[:, 0], 1e-7, 1 - 1e-7)
    bce = -(targets * np.log(p) + (1 - targets) * np.log(1 - p))
    np.testing.assert_allclose(float(stats["main_loss"]), bce.mean(), rtol=1e-5)
    # The GS term sees the two pairs from both ends (the singles are skipped).
    assert float(np.sum(stats["gs_supervised"])) == 4
    np.testing.assert_allclose(float(stats["gs_loss"][1]), 4 * 14 / 9, rtol=1e-6)


def test_with_singles_rejects_bad_sizes_and_shapes():
    pairs, singles, labels = _few_pairs_and_singles()
    with pytest.raises(ValueError, match="pairs_per_batch"):
        pairs.with_singles(singles, labels, 7, 5)
    with pytest.raises(ValueError, match="singles_per_batch"):
        pairs.with_singles(singles, labels, 2, 21)
    with pytest.raises(ValueError, match="labels of shape"):
        pairs.with_singles(singles, labels[:, None], 2, 5)
