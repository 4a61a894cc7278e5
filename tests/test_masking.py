"""`cfkeras.masking`: overlaps and masks on hand-built boxes and region
masks, the label update, fills, the random choice, errors, config, and the
`tf.data` transform feeding `fit` with and without XLA."""

import doctest
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import cfkeras
from cfkeras import masking
from cfkeras.layers import LearnedFill

# A 2 x 2 grid of cells: (0, 0), (0, 1), (1, 0), (1, 1), each 0.5 x 0.5.
GRID = masking.grid_boxes(2, 2)


def test_grid_boxes_row_major():
    np.testing.assert_array_equal(
        GRID,
        [[0, 0, 0.5, 0.5], [0, 0.5, 0.5, 1], [0.5, 0, 1, 0.5], [0.5, 0.5, 1, 1]],
    )


def test_box_overlap_hand_computed():
    # The region covers the top-left cell and a 0.5 x 0.125 strip of the top-right one.
    region = [[0.0, 0.0, 0.5, 0.625]]
    feature_area = masking.box_overlap(GRID, region).numpy()[:, 0]
    np.testing.assert_allclose(feature_area, [1.0, 0.25, 0.0, 0.0])
    iou = masking.box_overlap(GRID, region, "iou").numpy()[:, 0]
    # region area 0.3125: IoU = inter / (0.25 + 0.3125 - inter)
    np.testing.assert_allclose(iou, [0.25 / 0.3125, 0.0625 / 0.5, 0.0, 0.0], rtol=1e-6)
    # Leading (batch) axes broadcast; a zero-area feature box overlaps 0, not NaN.
    batched = masking.box_overlap(np.stack([GRID, GRID]), np.array([region, region]))
    assert batched.shape == (2, 4, 1)
    assert masking.box_overlap([[0.2, 0.2, 0.2, 0.2]], region).numpy()[0, 0] == 0.0


@pytest.mark.parametrize("threshold, masked", [(0.2, [1, 1, 0, 0]), (0.25, [1, 0, 0, 0])])
def test_feature_mask_threshold_is_strict(threshold, masked):
    region = [[0.0, 0.0, 0.5, 0.625]]
    mask = masking.feature_mask(GRID, region, [0], removed=[1.0, 0.0], threshold=threshold)
    np.testing.assert_array_equal(mask.numpy(), np.array(masked, bool))


def test_every_instance_of_the_removed_label_is_masked_and_padding_never():
    regions = [
        [0.0, 0.0, 0.5, 0.5],  # label 1, top-left
        [0.5, 0.5, 1.0, 1.0],  # label 1 again, bottom-right
        [0.0, 0.5, 0.5, 1.0],  # label 0, top-right
        [0.5, 0.0, 1.0, 0.5],  # padding (-1), bottom-left
    ]
    labels = [1, 1, 0, -1]
    mask = lambda removed: masking.feature_mask(GRID, regions, labels, removed).numpy()  # noqa: E731
    np.testing.assert_array_equal(mask([0, 1, 0]), [True, False, False, True])
    np.testing.assert_array_equal(mask([1, 0, 0]), [False, True, False, False])
    np.testing.assert_array_equal(mask([1, 1, 0]), [True, True, False, True])
    np.testing.assert_array_equal(mask([0, 0, 1]), [False] * 4)  # label 2 has no region


# === Region masks ===


def _top_left_mask(size=8):
    """An 8 x 8 mask (each cell of GRID is 4 x 4 pixels) covering 16 pixels
    of cell (0, 0) (all), 4 of cell (0, 1) (1/4) and 2 of cell (1, 0) (1/8)."""
    mask = np.zeros((size, size), "float32")
    mask[:4, :4] = 1
    mask[:4, 4] = 1  # a column of 4 pixels in cell (0, 1)
    mask[4, :2] = 1  # 2 pixels in cell (1, 0)
    return mask


def test_mask_overlap_is_area_pooling_of_the_mask():
    mask = _top_left_mask()
    overlap = masking.mask_overlap(GRID, mask[None]).numpy()[:, 0]
    np.testing.assert_allclose(overlap, [1.0, 0.25, 0.125, 0.0])
    # = average pooling of the mask over the 4 x 4 cells, in row-major order.
    pooled = mask.reshape(2, 4, 2, 4).mean(axis=(1, 3)).reshape(-1)
    np.testing.assert_allclose(overlap, pooled)
    # IoU: mask area 22 / 64; cell area 1/4.
    iou = masking.mask_overlap(GRID, mask[None], "iou").numpy()[:, 0]
    area_m = 22 / 64
    inter = np.array([16, 4, 2, 0]) / 64
    np.testing.assert_allclose(iou, inter / (0.25 + area_m - inter), rtol=1e-6)
    # A box that cuts pixels counts the part of each pixel inside it.
    half_pixel = [[0.0, 0.0, 1 / 16, 1 / 16]]  # a quarter of pixel (0, 0)
    assert masking.mask_overlap(half_pixel, mask[None]).numpy()[0, 0] == pytest.approx(1.0)
    off = [[0.0, 0.0, 1.0, 1.0]]
    assert masking.mask_overlap(off, mask[None]).numpy()[0, 0] == pytest.approx(22 / 64)


@pytest.mark.parametrize(
    "threshold, masked",
    [
        (0.0, [1, 1, 1, 0]),
        (0.12, [1, 1, 1, 0]),
        (0.125, [1, 1, 0, 0]),  # strictly greater: the 1/8 cell stays
        (0.13, [1, 1, 0, 0]),
        (0.24, [1, 1, 0, 0]),
        (0.25, [1, 0, 0, 0]),
        (0.26, [1, 0, 0, 0]),
        (0.99, [1, 0, 0, 0]),
    ],
)
def test_mask_regions_mask_exactly_the_expected_cells(threshold, masked):
    mask = masking.feature_mask(
        GRID, _top_left_mask()[None], [0], [1.0, 0.0], threshold=threshold, kind="masks"
    )
    np.testing.assert_array_equal(mask.numpy(), np.array(masked, bool))


@pytest.mark.parametrize("measure", ["feature_area", "iou"])
@pytest.mark.parametrize("threshold", [0.0, 0.2, 0.5])
def test_a_mask_equal_to_a_box_gives_the_box_result(measure, threshold):
    # Boxes on the pixel edges of a 16 x 16 canvas, against a 4 x 4 grid of cells.
    rng = np.random.default_rng(0)
    cells = masking.grid_boxes(4, 4)
    corners = np.sort(rng.integers(0, 17, size=(6, 3, 2, 2)), axis=2)  # (batch, R, lo/hi, y/x)
    boxes = np.concatenate([corners[:, :, 0], corners[:, :, 1]], -1).astype("float32") / 16
    y, x = np.arange(16)[:, None], np.arange(16)[None, :]
    lo, hi = corners[:, :, 0], corners[:, :, 1]
    masks = (
        (y >= lo[..., 0, None, None])
        & (y < hi[..., 0, None, None])
        & (x >= lo[..., 1, None, None])
        & (x < hi[..., 1, None, None])
    )
    np.testing.assert_allclose(
        masking.mask_overlap(cells, masks, measure).numpy(),
        masking.box_overlap(cells, boxes, measure).numpy(),
        atol=1e-6,
    )
    region_labels = rng.integers(-1, 3, size=(6, 3))
    removed = (rng.random((6, 3)) < 0.6).astype("float32")
    np.testing.assert_array_equal(
        masking.feature_mask(cells, masks, region_labels, removed, threshold, measure, "masks"),
        masking.feature_mask(cells, boxes, region_labels, removed, threshold, measure),
    )
    # And through the transform, same draws: the same pairs.
    examples = {
        "features": rng.normal(size=(6, 16, 2)).astype("float32"),
        "region_labels": region_labels.astype("int32"),
        "labels": np.ones((6, 3), "float32"),
    }
    pairs = {}
    for kind, regions in (("boxes", boxes), ("masks", masks.astype("uint8"))):
        transform = masking.FeatureMasking(
            threshold=threshold, overlap=measure, feature_boxes=cells, seed=7, regions=kind
        )
        dataset = tf.data.Dataset.from_tensor_slices({**examples, "regions": regions}).batch(3)
        pairs[kind] = [
            (x["counterfactual"].numpy(), y["counterfactual"].numpy())
            for x, y in transform(dataset)
        ]
    for (x_box, y_box), (x_mask, y_mask) in zip(pairs["boxes"], pairs["masks"]):
        np.testing.assert_array_equal(x_box, x_mask)
        np.testing.assert_array_equal(y_box, y_mask)


def _mask_examples(n=8):
    """`_examples` with the two regions as 8 x 8 masks of the same cells."""
    examples = _examples(n)
    masks = np.zeros((n, 2, 8, 8), "uint8")
    masks[:, 0, :4, :4] = 1
    masks[:, 1, 4:, 4:] = 1
    return {**examples, "regions": masks}


def test_bad_masks_raise_clear_errors():
    examples = _mask_examples()
    transform = masking.FeatureMasking(feature_boxes=GRID, regions="masks")
    removed = np.ones((8, 3), "float32")
    bad = {**examples, "regions": examples["regions"].astype("float32") * 0.5}
    with pytest.raises(ValueError, match="binary"):
        transform.counterfactual(bad, removed)
    with pytest.raises(tf.errors.InvalidArgumentError, match="binary"):
        next(iter(transform(tf.data.Dataset.from_tensor_slices(bad).batch(8))))
    with pytest.raises(ValueError, match=r"\(\.\.\., R, H, W\)"):
        transform.counterfactual({**examples, "regions": examples["regions"][:, 0]}, removed)
    with pytest.raises(ValueError, match="2 regions but 1 region labels"):
        transform.counterfactual(
            {**examples, "region_labels": examples["region_labels"][:, :1]}, removed
        )
    with pytest.raises(ValueError, match="regions='masks'"):  # masks given as boxes
        masking.FeatureMasking(feature_boxes=GRID).counterfactual(examples, removed)
    with pytest.raises(ValueError, match="regions must be one of"):
        masking.FeatureMasking(regions="polygons")
    with pytest.raises(ValueError, match="binary"):
        masking.check_masks([[[0.0, 2.0]]])
    with pytest.raises(ValueError, match=r"\(\.\.\., R, H, W\)"):
        masking.mask_overlap(GRID, np.ones((8, 8)))


def test_docstring_examples():
    result = doctest.testmod(masking, extraglobs={"cfkeras": cfkeras, "np": np}, verbose=False)
    assert result.attempted >= 3
    assert result.failed == 0


def test_label_update():
    labels = np.array([[1.0, 1.0, 0.0, 1.0]])
    removed = np.array([[0.0, 1.0, 0.0, 1.0]])
    np.testing.assert_array_equal(
        masking.counterfactual_labels(labels, removed).numpy(), [[1, 0, 0, 0]]
    )
    np.testing.assert_array_equal(
        masking.counterfactual_labels(labels, removed, "all_zero").numpy(), [[0, 0, 0, 0]]
    )


def test_fills():
    features = np.arange(8, dtype="float32").reshape(4, 2) + 1
    mask = np.array([True, False, False, True])
    zeros = masking.fill_features(features, mask).numpy()
    np.testing.assert_array_equal(zeros, [[0, 0], [3, 4], [5, 6], [0, 0]])
    mean = masking.fill_features(features, mask, "mean", [9.0, -9.0]).numpy()
    np.testing.assert_array_equal(mean, [[9, -9], [3, 4], [5, 6], [9, -9]])
    layer = LearnedFill(initializer=keras.initializers.Constant(7.0))
    filled = layer({"features": zeros[None], "mask": mask[None].astype("float32")})
    np.testing.assert_array_equal(filled.numpy()[0], [[7, 7], [3, 4], [5, 6], [7, 7]])


def test_choose_removed_takes_present_labels_only():
    rng = np.random.default_rng(0)
    labels = (rng.random((500, 6)) < 0.4).astype("float32")
    labels[0] = 0  # no label: nothing to remove
    removed = masking.choose_removed(labels, rng.random((500, 7)), labels_removed=2).numpy()
    assert np.all(removed <= labels)
    count = removed.sum(-1)
    present = labels.sum(-1)
    assert count[0] == 0
    assert np.all(((count >= 1) & (count <= np.minimum(2, present)))[present > 0])
    assert set(count[present >= 2]) == {1.0, 2.0}
    # Every present label gets removed sometimes (uniform choice).
    assert np.all(removed.sum(0) > 0)


def _examples(n=8, features=3):
    rng = np.random.default_rng(1)
    labels = np.zeros((n, 3), "float32")
    labels[:, 0] = 1  # top-left object
    labels[:, 1] = 1  # bottom-right object
    labels[::2, 2] = 1  # sometimes an object without a region
    return {
        "features": rng.normal(size=(n, 4, features)).astype("float32") + 2,
        "regions": np.tile(np.array([[[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]]], "float32"), (n, 1, 1)),
        "region_labels": np.tile(np.array([[0, 1]], "int32"), (n, 1)),
        "labels": labels,
    }


@pytest.mark.parametrize("batched", [False, True])
def test_transform_pairs_match_the_rule(batched):
    examples = _examples()
    dataset = tf.data.Dataset.from_tensor_slices(examples)
    dataset = dataset.batch(4) if batched else dataset
    pairs = masking.FeatureMasking(feature_boxes=GRID, seed=3)(dataset)
    rows = []
    for x, y in pairs:
        batch = lambda t: t.numpy().reshape(-1, *t.shape[-2 if t.shape.rank > 1 else -1 :])  # noqa: E731
        rows.append((batch(x["counterfactual"]), y["original"].numpy(), y["counterfactual"]))
    cf = np.concatenate([r[0] for r in rows]).reshape(8, 4, 3)
    y_cf = np.concatenate([np.reshape(r[2], (-1, 3)) for r in rows])
    removed = examples["labels"] - y_cf
    assert np.all(removed.sum(-1) == 1)
    assert np.all(removed[:, 2] == 0)  # label 2 has no region: never removed
    for k in range(8):
        expected = examples["features"][k].copy()
        if removed[k, 0]:
            expected[0] = 0
        if removed[k, 1]:
            expected[3] = 0
        np.testing.assert_array_equal(cf[k], expected)


def test_transform_redraws_every_epoch_and_is_seeded():
    dataset = tf.data.Dataset.from_tensor_slices(_examples(n=16)).batch(16)

    def epochs(seed, count=4):
        pairs = masking.FeatureMasking(feature_boxes=GRID, seed=seed)(dataset)
        return [next(iter(pairs))[1]["counterfactual"].numpy() for _ in range(count)]

    first = epochs(0)
    assert any(not np.array_equal(first[0], later) for later in first[1:])
    second = epochs(0)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_learned_fill_inputs_and_all_zero_target():
    dataset = tf.data.Dataset.from_tensor_slices(_examples()).batch(8)
    transform = masking.FeatureMasking(
        fill="learned", target="all_zero", feature_boxes=GRID, seed=0
    )
    x, y = next(iter(transform(dataset)))
    assert set(x["original"]) == {"features", "mask"}
    assert np.all(x["original"]["mask"].numpy() == 0)
    mask = x["counterfactual"]["mask"].numpy()
    np.testing.assert_array_equal(mask.sum(-1), np.ones(8))
    assert np.all(x["counterfactual"]["features"].numpy()[mask > 0] == 0)
    assert np.all(y["counterfactual"].numpy() == 0)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda e: e.update(regions=e["regions"] * 2), "out of range"),
        (lambda e: e["regions"].__setitem__((0, 0, 0), np.nan), "NaN"),
        (lambda e: e["features"].__setitem__((0, 0, 0), np.inf), "NaN or Inf"),
        (lambda e: e.update(regions=e["regions"][..., ::-1].copy()), "max < min"),
    ],
)
def test_bad_values_raise_clear_errors(change, message):
    examples = _examples()
    change(examples)
    dataset = tf.data.Dataset.from_tensor_slices(examples).batch(8)
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match=message):
        next(iter(masking.FeatureMasking(feature_boxes=GRID)(dataset)))
    with pytest.raises(ValueError, match=message):  # eagerly, on one batch
        masking.FeatureMasking(feature_boxes=GRID).counterfactual(
            examples, np.ones((8, 3), "float32")
        )


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"threshold": 1.5}, "threshold"),
        ({"fill": "noise"}, "fill must be"),
        ({"fill": "mean"}, "fill_value"),
        ({"target": "flip"}, "target must be"),
        ({"labels_removed": 0}, "labels_removed"),
        ({"feature_boxes": [[0, 0, 2, 2]]}, "out of range"),
        ({"feature_boxes": np.zeros((0, 4))}, "empty"),
        ({"feature_boxes": [[0, 0, 1]]}, r"\(\.\.\., 4\)"),
    ],
)
def test_bad_arguments_raise_clear_errors(arguments, message):
    with pytest.raises(ValueError, match=message):
        masking.FeatureMasking(**arguments)


def test_mismatched_shapes_raise():
    examples = _examples()
    transform = masking.FeatureMasking(feature_boxes=masking.grid_boxes(3, 3))
    with pytest.raises(ValueError, match="4 features but 9 feature boxes"):
        transform.counterfactual(examples, np.ones((8, 3), "float32"))
    examples["region_labels"] = examples["region_labels"][:, :1]
    with pytest.raises(ValueError, match="2 regions but 1 region labels"):
        masking.FeatureMasking(feature_boxes=GRID).counterfactual(
            examples, np.ones((8, 3), "float32")
        )
    with pytest.raises(ValueError, match="keys"):
        masking.FeatureMasking()(tf.data.Dataset.from_tensor_slices(np.zeros((2, 3))))


def test_config_round_trips():
    transform = masking.FeatureMasking(
        threshold=0.3,
        overlap="iou",
        fill="mean",
        fill_value=[1.0, 2.0, 3.0],
        seed=5,
        feature_boxes=GRID,
        labels_removed=2,
        target="all_zero",
        regions="masks",
    )
    config = json.loads(json.dumps(keras.saving.serialize_keras_object(transform)))
    clone = keras.saving.deserialize_keras_object(config)
    assert isinstance(clone, masking.FeatureMasking)
    assert clone.get_config() == transform.get_config()
    layer = LearnedFill(name="fill")
    config = json.loads(json.dumps(keras.saving.serialize_keras_object(layer)))
    assert keras.saving.deserialize_keras_object(config).get_config() == layer.get_config()


def _fit_losses(jit_compile, fill, regions="boxes"):
    keras.utils.set_random_seed(0)
    model = cfkeras.models.multi_label_classifier(
        3, feature_dim=3, num_features=4, hidden_units=(8,), learned_fill=fill == "learned"
    )
    gs = cfkeras.GradientSupervisionModel(model, gs_layer="pooled_features", gs_weight=1.0)
    gs.compile(
        optimizer=keras.optimizers.Adadelta(1.0),
        loss="binary_crossentropy",
        jit_compile=jit_compile,
    )
    examples = _examples(n=32) if regions == "boxes" else _mask_examples(n=32)
    dataset = tf.data.Dataset.from_tensor_slices(examples).batch(8)
    pairs = masking.FeatureMasking(fill=fill, feature_boxes=GRID, seed=0, regions=regions)(dataset)
    history = gs.fit(pairs, epochs=2, verbose=0)
    return history.history


@pytest.mark.parametrize("fill", ["zeros", pytest.param("learned", marks=pytest.mark.slow)])
def test_transform_feeds_fit_with_and_without_xla(fill):
    eager = _fit_losses(False, fill)
    xla = _fit_losses(True, fill)
    assert np.all(np.isfinite(eager["loss"]))
    assert eager["gs_supervised"][-1] == 1.0  # every pair changes a label
    np.testing.assert_allclose(xla["loss"], eager["loss"], rtol=1e-4)
    np.testing.assert_allclose(xla["gs_loss"], eager["gs_loss"], rtol=1e-4)


def test_mask_regions_feed_fit_with_and_without_xla():
    eager = _fit_losses(False, "zeros", regions="masks")
    xla = _fit_losses(True, "zeros", regions="masks")
    assert eager["gs_supervised"][-1] == 1.0
    np.testing.assert_allclose(xla["loss"], eager["loss"], rtol=1e-4)
    np.testing.assert_allclose(xla["gs_loss"], eager["gs_loss"], rtol=1e-4)
