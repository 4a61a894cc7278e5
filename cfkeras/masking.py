"""Counterfactuals in feature space: mask the features of a label's regions.

Teney, Abbasnejad & van den Hengel (ECCV 2020, section 4.1 and supplement A)
generate VQA counterfactuals without any human edit: every image feature (an
object box) that overlaps the human-attention region by more than 0.2 is
masked, and the target becomes all-zero. This module is that method applied
to multi-label classification, as `tf.data` transformations:

* every example holds `N` features, each with a box, and `R` annotated
  regions, each with a label (e.g. the ground-truth boxes of COCO objects);
* a counterfactual removes one or more labels present in the example: every
  feature whose overlap with any region of a removed label (every instance
  of it) exceeds `threshold` is replaced by zeros, a fixed (e.g. mean)
  vector, or a learned vector (`cfkeras.layers.LearnedFill`);
* its labels lose the removed labels (`target="remove"`), or become
  all-zero (`target="all_zero"`, the VQA case).

Boxes are `(y_min, x_min, y_max, x_max)` normalised to `[0, 1]`, as in
`tf.image`. A region is a box or (`regions="masks"`) a binary `H x W` mask
on a canvas grid spanning `[0, 1]^2` (pixel `(i, j)` is the square
`[i / H, (i + 1) / H] x [j / W, (j + 1) / W]`), e.g. an instance or
per-label segmentation mask. The overlap of a feature box `f` with a
region `r` (for a mask, `area(f ∩ r)` is the area of `f` covered by the
mask's pixels, i.e. the mask area-pooled over `f`; see `mask_overlap`):

```
"feature_area": area(f ∩ r) / area(f)     (the fraction of the feature inside the region)
"iou":          area(f ∩ r) / area(f ∪ r)
```

Everything is vectorised over any leading (batch) axes, so the transform
runs on single examples or on batches, on the fly: with `FeatureMasking`,
each epoch removes a different label of each example.
"""

import keras
import numpy as np
import tensorflow as tf

from cfkeras.pairs import make_pair

OVERLAPS = ("feature_area", "iou")
REGION_KINDS = ("boxes", "masks")
FILLS = ("zeros", "mean", "learned")
TARGETS = ("remove", "all_zero")
# Keys of an example of the dataset `FeatureMasking` maps.
FEATURES, BOXES, REGIONS, REGION_LABELS, LABELS = (
    "features",
    "boxes",
    "regions",
    "region_labels",
    "labels",
)
MASK = "mask"


# === Boxes ===


def check_boxes(boxes, what="boxes"):
    """Raises a `ValueError` naming `what` unless `boxes` are valid boxes.

    Valid: a float array of shape `(..., 4)`, finite, `(y_min, x_min, y_max,
    x_max)` inside `[0, 1]` with `y_min <= y_max` and `x_min <= x_max`.
    Returns the boxes as a float32 NumPy array.
    """
    boxes = np.asarray(boxes, dtype="float32")
    if boxes.ndim < 1 or boxes.shape[-1] != 4:
        raise ValueError(
            f"{what} must have shape (..., 4) as (y_min, x_min, y_max, x_max); got {boxes.shape}."
        )
    if boxes.size == 0:
        raise ValueError(f"{what} is empty.")
    if not np.all(np.isfinite(boxes)):
        raise ValueError(f"{what} contains NaN or Inf.")
    if np.any(boxes < 0) or np.any(boxes > 1):
        raise ValueError(
            f"{what} out of range: coordinates must be normalised to [0, 1]; got values "
            f"in [{boxes.min()}, {boxes.max()}]."
        )
    if np.any(boxes[..., 2] < boxes[..., 0]) or np.any(boxes[..., 3] < boxes[..., 1]):
        raise ValueError(f"{what}: some boxes have max < min (y_max < y_min or x_max < x_min).")
    return boxes


def grid_boxes(rows, columns):
    """The boxes of the cells of a `rows x columns` feature map, row-major.

    Returns float32 `(rows * columns, 4)`: the box of cell `(i, j)` (row
    `i * columns + j`, the order of `reshape(feature_map, (-1, channels))`)
    is `(i / rows, j / columns, (i + 1) / rows, (j + 1) / columns)`.
    """
    if rows < 1 or columns < 1:
        raise ValueError(f"grid_boxes needs rows, columns >= 1; got {rows}, {columns}.")
    i, j = np.meshgrid(np.arange(rows), np.arange(columns), indexing="ij")
    i, j = i.reshape(-1), j.reshape(-1)
    return np.stack([i / rows, j / columns, (i + 1) / rows, (j + 1) / columns], -1).astype(
        "float32"
    )


def box_overlap(feature_boxes, region_boxes, measure="feature_area"):
    """Overlap of every feature box with every region box.

    Formula (areas of axis-aligned boxes; 0 where a denominator is 0):

    ```
    "feature_area": area(f ∩ r) / area(f)
    "iou":          area(f ∩ r) / (area(f) + area(r) - area(f ∩ r))
    ```

    Args:
        feature_boxes: `(..., N, 4)` boxes of the features.
        region_boxes: `(..., R, 4)` boxes of the regions (same leading axes,
            or broadcastable to them).
        measure: `"feature_area"` or `"iou"`.

    Returns:
        float32 `(..., N, R)`.

    Example:

    >>> cell = [[0.0, 0.0, 0.5, 0.5]]
    >>> region = [[0.0, 0.25, 1.0, 1.0]]  # covers the right half of the cell
    >>> float(cfkeras.masking.box_overlap(cell, region)[0, 0])
    0.5
    """
    if measure not in OVERLAPS:
        raise ValueError(f"measure must be one of {OVERLAPS}; received {measure!r}.")
    f = tf.cast(feature_boxes, "float32")[..., :, None, :]
    r = tf.cast(region_boxes, "float32")[..., None, :, :]
    height = tf.nn.relu(tf.minimum(f[..., 2], r[..., 2]) - tf.maximum(f[..., 0], r[..., 0]))
    width = tf.nn.relu(tf.minimum(f[..., 3], r[..., 3]) - tf.maximum(f[..., 1], r[..., 1]))
    intersection = height * width
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    if measure == "feature_area":
        denominator = area(f) + tf.zeros_like(intersection)
    else:
        denominator = area(f) + area(r) - intersection
    return tf.math.divide_no_nan(intersection, denominator)


# === Masks ===


def check_masks(masks, what="region masks"):
    """Raises a `ValueError` naming `what` unless `masks` are binary masks.

    Valid: shape `(..., R, H, W)` with `H, W >= 1`, every value 0 or 1
    (booleans are fine). Returns the masks as a float32 NumPy array.
    """
    masks = np.asarray(masks)
    if masks.ndim < 3:
        raise ValueError(f"{what} must have shape (..., R, H, W); got {masks.shape}.")
    if masks.size == 0:
        raise ValueError(f"{what} is empty: shape {masks.shape}.")
    masks = masks.astype("float32")
    if not np.all((masks == 0) | (masks == 1)):
        bad = masks[(masks != 0) & (masks != 1)]
        raise ValueError(f"{what} must be binary (0 or 1); found e.g. {bad.flat[0]}.")
    return masks


def _pixel_coverage(low, high, pixels):
    """`(..., pixels)`: the length of `[low, high]` inside each of `pixels`
    equal intervals of `[0, 1]`, in units of one pixel (1 = fully inside)."""
    edges = tf.range(pixels + 1, dtype="float32") / float(pixels)
    inside = tf.minimum(high[..., None], edges[1:]) - tf.maximum(low[..., None], edges[:-1])
    return tf.nn.relu(inside) * float(pixels)


def mask_overlap(feature_boxes, region_masks, measure="feature_area"):
    """Overlap of every feature box with every region given as a binary mask.

    A mask `m` of `H x W` pixels covers the canvas `[0, 1]^2`, pixel `(i, j)`
    the square `[i / H, (i + 1) / H] x [j / W, (j + 1) / W]`. The area of a
    feature box `f` covered by the mask is the mask area-pooled over `f`
    (pixels cut by the box's edges count for the part inside it):

    Formula:

    ```
    area(f ∩ m) = Σ_ij m[i, j] · |f ∩ pixel(i, j)|
    area(m)     = Σ_ij m[i, j] / (H W)
    "feature_area": area(f ∩ m) / area(f)     (the fraction of f's area covered by the mask)
    "iou":          area(f ∩ m) / (area(f) + area(m) - area(f ∩ m))
    ```

    (0 where a denominator is 0.) For the cells of a `rows x columns` grid
    (`grid_boxes`) with `H, W` multiples of `rows, columns`, `"feature_area"`
    is average pooling of the mask over each cell. A mask that is exactly a
    box's rectangle (box edges on pixel edges) gives `box_overlap` of that box.

    Args:
        feature_boxes: `(..., N, 4)` boxes of the features.
        region_masks: `(..., R, H, W)` binary masks of the regions (0/1 or
            booleans; same leading axes, or broadcastable to them).
        measure: `"feature_area"` or `"iou"`.

    Returns:
        float32 `(..., N, R)`.

    Example:

    >>> cell = [[0.0, 0.0, 0.5, 0.5]]  # the top-left cell of a 2 x 2 grid
    >>> mask = np.zeros((1, 4, 4)); mask[0, 0, 1] = 1  # one pixel of its four
    >>> float(cfkeras.masking.mask_overlap(cell, mask)[0, 0])
    0.25
    """
    if measure not in OVERLAPS:
        raise ValueError(f"measure must be one of {OVERLAPS}; received {measure!r}.")
    f = tf.cast(feature_boxes, "float32")
    m = tf.cast(region_masks, "float32")
    if m.shape.rank is not None and m.shape.rank < 3:
        raise ValueError(f"region masks must have shape (..., R, H, W); got {m.shape}.")
    height, width = m.shape[-2], m.shape[-1]
    if height is None or width is None:
        raise ValueError(f"The masks' height and width must be static; got {m.shape}.")
    rows = _pixel_coverage(f[..., 0], f[..., 2], height)  # (..., N, H)
    columns = _pixel_coverage(f[..., 1], f[..., 3], width)  # (..., N, W)
    # Σ_ij rows[n, i] m[r, i, j] columns[n, j], in pixels, then in canvas area.
    covered = tf.einsum("...ni,...rij,...nj->...nr", rows, m, columns) / float(height * width)
    area_f = ((f[..., 2] - f[..., 0]) * (f[..., 3] - f[..., 1]))[..., :, None]
    if measure == "feature_area":
        return tf.math.divide_no_nan(covered, area_f + tf.zeros_like(covered))
    area_m = tf.reduce_mean(m, axis=[-2, -1])[..., None, :]
    return tf.math.divide_no_nan(covered, area_f + area_m - covered)


def region_overlap(feature_boxes, regions, measure="feature_area", kind="boxes"):
    """`box_overlap` (`kind="boxes"`, regions `(..., R, 4)`) or
    `mask_overlap` (`kind="masks"`, regions `(..., R, H, W)`)."""
    if kind not in REGION_KINDS:
        raise ValueError(f"regions must be one of {REGION_KINDS}; received {kind!r}.")
    if kind == "masks":
        return mask_overlap(feature_boxes, regions, measure)
    return box_overlap(feature_boxes, regions, measure)


# === Counterfactuals ===


def feature_mask(
    feature_boxes,
    regions,
    region_labels,
    removed,
    threshold=0.2,
    measure="feature_area",
    kind="boxes",
):
    """Which features a counterfactual masks: `(..., N)` booleans.

    A feature is masked when its overlap (`box_overlap`, or `mask_overlap`
    for masks) with at least one region whose label is removed is strictly
    greater than `threshold`.

    Args:
        feature_boxes: `(..., N, 4)` feature boxes.
        regions: `(..., R, 4)` region boxes, or with `kind="masks"`
            `(..., R, H, W)` binary region masks.
        region_labels: `(..., R)` integer label of each region; negative
            for padding (a region that never matches).
        removed: `(..., C)` labels to remove (0/1 or booleans).
        threshold: overlap above which a feature is masked.
        measure: see `box_overlap` and `mask_overlap`.
        kind: `"boxes"` or `"masks"`: what `regions` holds.
    """
    removed = tf.cast(removed, "float32")
    region_labels = tf.cast(region_labels, "int32")
    num_labels = removed.shape[-1]
    # one_hot of a negative id is all-zero: padding regions never match.
    region_removed = tf.reduce_sum(
        tf.one_hot(region_labels, num_labels) * removed[..., None, :], axis=-1
    )  # (..., R)
    hit = region_overlap(feature_boxes, regions, measure, kind) > threshold  # (..., N, R)
    return tf.reduce_any(tf.logical_and(hit, region_removed[..., None, :] > 0), axis=-1)


def counterfactual_labels(labels, removed, target="remove"):
    """The labels of a counterfactual.

    `"remove"`: `labels` with the removed labels set to 0; `"all_zero"`:
    an all-zero target (the VQA case: the answer is no longer supported).
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}; received {target!r}.")
    labels = tf.convert_to_tensor(labels)
    if target == "all_zero":
        return tf.zeros_like(labels)
    keep = 1 - tf.cast(tf.cast(removed, "bool"), labels.dtype)
    return labels * keep


def fill_features(features, mask, fill="zeros", fill_value=None):
    """`features` `(..., N, D)` with the rows where `mask` `(..., N)` is true
    replaced by zeros (`"zeros"`, also `"learned"`: the model's
    `cfkeras.layers.LearnedFill` fills them) or by `fill_value` `(D,)`
    (`"mean"`)."""
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {FILLS}; received {fill!r}.")
    features = tf.convert_to_tensor(features)
    keep = 1 - tf.cast(mask, features.dtype)[..., None]
    if fill == "mean":
        if fill_value is None:
            raise ValueError("fill='mean' needs `fill_value`, a (features,) vector.")
        return features * keep + tf.cast(fill_value, features.dtype) * (1 - keep)
    return features * keep


def choose_removed(labels, randomness, labels_removed=1):
    """A random set of present labels to remove: `(..., C)` float32 0/1.

    Per example, `k` is drawn uniformly from `1 .. min(labels_removed,
    present)` and `k` of the present labels (those > 0.5) are drawn uniformly
    without replacement. An example with no label removes nothing.

    Args:
        labels: `(..., C)` multi-hot labels.
        randomness: `(..., C + 1)` uniform draws in `[0, 1)`.
        labels_removed: the largest number of labels removed at once.
    """
    present = tf.cast(labels, "float32") > 0.5
    draws, count_draw = randomness[..., :-1], randomness[..., -1]
    key = tf.where(present, draws, 2.0)
    rank = tf.argsort(tf.argsort(key, axis=-1), axis=-1)
    n_present = tf.reduce_sum(tf.cast(present, "float32"), axis=-1)
    upper = tf.minimum(float(labels_removed), n_present)
    k = tf.floor(count_draw * upper) + 1.0  # 1 .. upper
    chosen = tf.logical_and(present, tf.cast(rank, "float32") < k[..., None])
    return tf.cast(chosen, "float32")


@keras.saving.register_keras_serializable(package="cfkeras")
class FeatureMasking:
    """Counterfactual pairs made on the fly by masking the features of labels.

    Maps a `tf.data.Dataset` of examples (single or batched) to a dataset of
    pairs in `cfkeras.pairs`'s format, `({"original": x, "counterfactual":
    x_cf}, {"original": y, "counterfactual": y_cf})`, ready for
    `cfkeras.GradientSupervisionModel` (or, flattened, for augmentation).
    Every time the dataset is iterated (every epoch), each example removes
    another random choice of its present labels that have a region (an
    example without one is paired with itself: equal labels, no GS signal).

    An example is a dict:

    * `"features"`: `(N, D)` feature vectors (e.g. the cells of a CNN
      feature map, or object features);
    * `"boxes"`: `(N, 4)` their boxes (omit with `feature_boxes`);
    * `"regions"`: `(R, 4)` annotated region boxes, or with
      `regions="masks"` `(R, H, W)` binary region masks on a canvas grid
      (any dtype holding 0/1: bool, uint8, float), `"region_labels"`:
      `(R,)` their integer labels (negative: padding). A per-label
      segmentation mask is one region a label.
    * `"labels"`: `(C,)` multi-hot labels.

    The inputs `x` are the features, or with `fill="learned"` a dict
    `{"features": ..., "mask": ...}` (masked rows zeroed, the mask as float,
    all-zero for originals) for a model whose first layer is
    `cfkeras.layers.LearnedFill`.

    Args:
        threshold: a feature is masked when its overlap with a region of a
            removed label is above this (the paper's 0.2).
        overlap: `"feature_area"` (intersection over the feature's box area;
            for masks, the fraction of the feature's box covered by the
            mask's pixels) or `"iou"`; see `box_overlap`, `mask_overlap`.
        regions: `"boxes"` or `"masks"`: what the examples' `"regions"` hold.
        fill: `"zeros"`, `"mean"` (`fill_value`) or `"learned"`.
        fill_value: with `"mean"`, the `(D,)` vector (e.g. the mean feature
            over the training set).
        target: `"remove"` (the removed labels set to 0) or `"all_zero"`.
        labels_removed: each counterfactual removes `k` labels, `k` uniform
            in `1 .. min(labels_removed, present)`.
        feature_boxes: optional `(N, 4)` boxes shared by every example (a
            grid, `grid_boxes`); the examples then need no `"boxes"`.
        seed: seed of the random choices (a new draw every iteration).

    Example:

    >>> import numpy as np, tensorflow as tf
    >>> boxes = cfkeras.masking.grid_boxes(2, 2)
    >>> examples = {
    ...     "features": np.ones((4, 4, 3), "float32"),
    ...     "regions": np.tile([[[0.0, 0.0, 0.5, 0.5]]], (4, 1, 1)).astype("float32"),
    ...     "region_labels": np.zeros((4, 1), "int32"),
    ...     "labels": np.tile([[1.0, 0.0]], (4, 1)).astype("float32"),
    ... }
    >>> masking = cfkeras.masking.FeatureMasking(feature_boxes=boxes, seed=0)
    >>> pairs = masking(tf.data.Dataset.from_tensor_slices(examples).batch(2))
    >>> x, y = next(iter(pairs))
    >>> x["counterfactual"][0, :, 0].numpy().tolist(), y["counterfactual"][0].numpy().tolist()
    ([0.0, 1.0, 1.0, 1.0], [0.0, 0.0])

    The same region as a 4 x 4 mask covering 3 pixels of the top-left cell
    (0.75 of its area) and 1 of the top-right one (0.25):

    >>> examples["regions"] = np.zeros((4, 1, 4, 4), "uint8")
    >>> examples["regions"][:, 0, 0, :3] = 1
    >>> examples["regions"][:, 0, 1, 0] = 1
    >>> masking = cfkeras.masking.FeatureMasking(
    ...     threshold=0.5, regions="masks", feature_boxes=boxes, seed=0
    ... )
    >>> x, y = next(iter(masking(tf.data.Dataset.from_tensor_slices(examples).batch(2))))
    >>> x["counterfactual"][0, :, 0].numpy().tolist()
    [0.0, 1.0, 1.0, 1.0]
    """

    def __init__(
        self,
        threshold=0.2,
        overlap="feature_area",
        fill="zeros",
        fill_value=None,
        target="remove",
        labels_removed=1,
        feature_boxes=None,
        seed=None,
        regions="boxes",
    ):
        if not 0 <= threshold < 1:
            raise ValueError(f"threshold must be in [0, 1); received {threshold}.")
        if overlap not in OVERLAPS:
            raise ValueError(f"overlap must be one of {OVERLAPS}; received {overlap!r}.")
        if fill not in FILLS:
            raise ValueError(f"fill must be one of {FILLS}; received {fill!r}.")
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}; received {target!r}.")
        if (fill == "mean") != (fill_value is not None):
            raise ValueError("Pass `fill_value` (a (features,) vector) exactly with fill='mean'.")
        if fill_value is not None:
            fill_value = np.asarray(fill_value, "float32")
            if fill_value.ndim != 1 or not np.all(np.isfinite(fill_value)):
                raise ValueError("fill_value must be a finite 1-D (features,) vector.")
        if regions not in REGION_KINDS:
            raise ValueError(f"regions must be one of {REGION_KINDS}; received {regions!r}.")
        if int(labels_removed) < 1:
            raise ValueError(f"labels_removed must be >= 1; received {labels_removed}.")
        if feature_boxes is not None:
            feature_boxes = check_boxes(feature_boxes, "feature_boxes")
            if feature_boxes.ndim != 2:
                raise ValueError(f"feature_boxes must be (N, 4); got {feature_boxes.shape}.")
        self.threshold = float(threshold)
        self.overlap = overlap
        self.fill = fill
        self.fill_value = fill_value
        self.target = target
        self.labels_removed = int(labels_removed)
        self.feature_boxes = feature_boxes
        self.seed = seed
        self.regions = regions

    def counterfactual(self, example, removed):
        """`(features_cf, labels_cf, mask)` of (a batch of) examples whose
        `removed` `(..., C)` labels are removed."""
        features = tf.convert_to_tensor(example[FEATURES])
        boxes = self._boxes(example, features)
        regions = tf.cast(tf.convert_to_tensor(example[REGIONS]), "float32")
        region_labels = tf.convert_to_tensor(example[REGION_LABELS])
        labels = tf.convert_to_tensor(example[LABELS])
        self._check_shapes(features, boxes, regions, region_labels, labels)
        with tf.control_dependencies(self._check_values(features, boxes, regions)):
            mask = feature_mask(
                boxes,
                regions,
                region_labels,
                removed,
                self.threshold,
                self.overlap,
                self.regions,
            )
        masked = fill_features(features, mask, self.fill, self.fill_value)
        return masked, counterfactual_labels(labels, removed, self.target), mask

    def pair(self, example, randomness):
        """One pair (or a batch of pairs) from an example and `(..., C + 1)`
        uniform draws (see `choose_removed`)."""
        # Only labels with a region can be removed: removing another would
        # change the label and not the input.
        labels = tf.convert_to_tensor(example[LABELS])
        region_labels = tf.cast(example[REGION_LABELS], "int32")
        has_region = tf.reduce_max(tf.one_hot(region_labels, labels.shape[-1]), axis=-2)
        removable = tf.cast(labels, "float32") * has_region
        removed = choose_removed(removable, randomness, self.labels_removed)
        masked, labels_cf, mask = self.counterfactual(example, removed)
        features, labels = tf.convert_to_tensor(example[FEATURES]), example[LABELS]
        labels = tf.cast(labels, labels_cf.dtype)
        if self.fill == "learned":
            original = {FEATURES: features, MASK: tf.zeros_like(mask, features.dtype)}
            counterfactual = {FEATURES: masked, MASK: tf.cast(mask, features.dtype)}
        else:
            original, counterfactual = features, masked
        return make_pair(original, counterfactual), make_pair(labels, labels_cf)

    def __call__(self, dataset):
        """The dataset of pairs; a new random choice every iteration."""
        spec = dataset.element_spec
        if not isinstance(spec, dict) or not {FEATURES, REGIONS, REGION_LABELS, LABELS} <= set(
            spec
        ):
            raise ValueError(
                "FeatureMasking maps a dataset of dicts with keys 'features', 'regions', "
                f"'region_labels', 'labels' (and 'boxes'); got {spec}."
            )
        num_labels = spec[LABELS].shape[-1]
        if num_labels is None:
            raise ValueError("The number of labels (last axis of 'labels') must be static.")
        randomness = tf.data.Dataset.random(seed=self.seed, rerandomize_each_iteration=True)

        def apply(example, draw):
            shape = tf.concat([tf.shape(example[LABELS])[:-1], [num_labels + 1]], 0)
            uniform = tf.random.stateless_uniform(shape, seed=tf.stack([draw, draw // 7 + 1]))
            return self.pair(example, uniform)

        zipped = tf.data.Dataset.zip(dataset, randomness)
        return zipped.map(apply, num_parallel_calls=tf.data.AUTOTUNE)

    # === Checks ===

    def _boxes(self, example, features):
        if self.feature_boxes is not None:
            if BOXES in example:
                raise ValueError("Pass feature boxes once: `feature_boxes` or 'boxes', not both.")
            return tf.constant(self.feature_boxes)
        if BOXES not in example:
            raise ValueError("The examples need 'boxes' (or pass `feature_boxes`).")
        return tf.convert_to_tensor(example[BOXES], "float32")

    def _check_shapes(self, features, boxes, regions, region_labels, labels):
        n, boxes_n = features.shape[-2], boxes.shape[-2]
        if features.shape.rank is not None and features.shape.rank < 2:
            raise ValueError(f"features must be (..., N, D); got shape {features.shape}.")
        if boxes.shape[-1] != 4:
            raise ValueError(f"feature boxes must end in 4 coordinates; got {boxes.shape}.")
        if self.regions == "boxes" and regions.shape[-1] != 4:
            raise ValueError(
                f"regions must be boxes (..., R, 4), as regions='boxes'; got {regions.shape} "
                "(pass regions='masks' for (..., R, H, W) masks)."
            )
        if self.regions == "masks" and (
            regions.shape.rank is not None
            and features.shape.rank is not None
            and regions.shape.rank != features.shape.rank + 1
        ):
            raise ValueError(
                f"region masks must be (..., R, H, W) with the features' leading axes; got "
                f"{regions.shape} for features {features.shape}."
            )
        if n is not None and boxes_n is not None and n != boxes_n:
            raise ValueError(f"{n} features but {boxes_n} feature boxes.")
        r = regions.shape[-2] if self.regions == "boxes" else regions.shape[-3]
        labels_r = region_labels.shape[-1]
        if r is not None and labels_r is not None and r != labels_r:
            raise ValueError(f"{r} regions but {labels_r} region labels.")
        if self.fill_value is not None and features.shape[-1] not in (None, len(self.fill_value)):
            raise ValueError(
                f"fill_value has {len(self.fill_value)} entries for {features.shape[-1]} "
                "feature dimensions."
            )
        if not region_labels.dtype.is_integer:
            raise ValueError(f"region_labels must be integers; got {region_labels.dtype}.")
        if labels.shape[-1] is None:
            raise ValueError("The number of labels (last axis of 'labels') must be static.")

    def _check_values(self, features, boxes, regions):
        """Run-time checks (the dataset's values are not known in advance)."""
        box_tensors = [(boxes, "feature boxes")]
        if self.regions == "boxes":
            box_tensors.append((regions, "regions"))
        if tf.executing_eagerly():
            for tensor, what in box_tensors:
                check_boxes(tensor.numpy(), what)
            if self.regions == "masks":
                check_masks(regions.numpy())
            if not np.all(np.isfinite(features.numpy())):
                raise ValueError("features contain NaN or Inf.")
            return []
        checks = [tf.debugging.assert_all_finite(features, "features contain NaN or Inf.")]
        if self.regions == "masks":
            checks.append(
                tf.debugging.assert_equal(
                    regions * (1.0 - regions),
                    tf.zeros_like(regions),
                    "region masks must be binary (0 or 1).",
                    summarize=1,
                )
            )
        for tensor, what in box_tensors:
            checks += [
                tf.debugging.assert_all_finite(tensor, f"{what} contain NaN or Inf."),
                tf.debugging.assert_greater_equal(
                    tensor, 0.0, f"{what} out of range: coordinates must be in [0, 1]."
                ),
                tf.debugging.assert_less_equal(
                    tensor, 1.0, f"{what} out of range: coordinates must be in [0, 1]."
                ),
                tf.debugging.assert_less_equal(
                    tensor[..., :2], tensor[..., 2:], f"{what}: some boxes have max < min."
                ),
            ]
        return checks

    # === Config ===

    def get_config(self):
        as_list = lambda a: None if a is None else a.tolist()  # noqa: E731
        return {
            "threshold": self.threshold,
            "overlap": self.overlap,
            "fill": self.fill,
            "fill_value": as_list(self.fill_value),
            "target": self.target,
            "labels_removed": self.labels_removed,
            "feature_boxes": as_list(self.feature_boxes),
            "seed": self.seed,
            "regions": self.regions,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
