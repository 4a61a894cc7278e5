"""Counterfactual pairs: the data contract of cfkeras, its builders and checks.

A batch of pairs is `(x, y)` or `(x, y, sample_weight)` with

```
x = {"original": x_i, "counterfactual": x_j}
y = {"original": y_i, "counterfactual": y_j}
sample_weight: optional: one weight per pair (both members), or a pair
               {"original": w_i, "counterfactual": w_j} of per-member weights
```

where `x_i`/`x_j` have the structure the wrapped model takes (a tensor, or a
dict/tuple of tensors for multi-input models). The keys are named, so a pair is
never guessed from the length of a tuple.

`Pairs` holds validated pairs in memory and makes `tf.data` pipelines from
them: pairs shuffled once as pairs (`to_dataset`), every member as an
independent example (`flatten`, the augmentation baseline), the paper's
random-relations control (`random_relations`), and batches that mix a few
pairs with many single examples (`with_singles`). With an `EpochSeed` as
their seed, the order of every epoch is a function of `(seed, epoch)` alone,
so a run resumed in a fresh process (`keras.callbacks.BackupAndRestore`) sees
the same data as the run it replaces.
"""

import dataclasses
import warnings

import keras
import numpy as np
import tensorflow as tf
from keras import ops

ORIGINAL = "original"
COUNTERFACTUAL = "counterfactual"
PARTNERS = ("any", "different_label")


def is_pair(value):
    """Whether `value` is a pair: a dict with exactly the two pair keys."""
    return isinstance(value, dict) and set(value) == {ORIGINAL, COUNTERFACTUAL}


def make_pair(original, counterfactual):
    """The pair structure `{"original": ..., "counterfactual": ...}`."""
    return {ORIGINAL: original, COUNTERFACTUAL: counterfactual}


# === Pair batches inside a step ===


def check_pair_keys(value, what):
    """Raises if `value` is a dict that names one pair key but is not a pair.

    Raises:
        ValueError: e.g. `{"original": x_i, "cf": x_j}`.
    """
    named = isinstance(value, dict) and (ORIGINAL in value or COUNTERFACTUAL in value)
    if named and not is_pair(value):
        raise ValueError(
            f"The {what} look like a pair but have the keys {sorted(value)}; a pair has "
            f"exactly the keys '{ORIGINAL}' and '{COUNTERFACTUAL}' (see cfkeras.pairs)."
        )


def check_no_ragged(x, what):
    """Raises if a leaf of `x` is a `tf.RaggedTensor` (pair members must be padded).

    Raises:
        ValueError: naming the fix (pad both members to one length).
    """
    if any(
        isinstance(leaf, tf.RaggedTensor) for leaf in tf.nest.flatten(x, expand_composites=False)
    ):
        raise ValueError(
            f"The {what} of a pair are ragged (tf.RaggedTensor): the two members of every "
            "pair are stacked into one batch, so pad them to one length first, e.g. "
            "`ragged.to_tensor(shape=(None, length))` or "
            "`keras.layers.TextVectorization(output_sequence_length=length)`."
        )


def check_pair_members(a, b, what):
    """Static check that the two members of a batch of pairs match.

    Raises:
        ValueError: naming `what` ("inputs", "labels"), when the members
            differ in structure, in shape (beyond the batch axis) or in dtype.
    """
    try:
        keras.tree.assert_same_structure(a, b)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"The original and counterfactual {what} of a pair differ in structure: {error}"
        ) from error
    for u, v in zip(keras.tree.flatten(a), keras.tree.flatten(b)):
        su, sv = tuple(u.shape)[1:], tuple(v.shape)[1:]
        compatible = len(su) == len(sv) and all(
            p is None or q is None or p == q for p, q in zip(su, sv)
        )
        if not compatible or u.dtype != v.dtype:
            raise ValueError(
                f"The original and counterfactual {what} of a pair must have the same "
                f"shape and dtype; got {tuple(u.shape)} {u.dtype} and {tuple(v.shape)} {v.dtype}. "
                "Pad or truncate both members to one length (e.g. "
                "`keras.layers.TextVectorization(output_sequence_length=...)` for text) and "
                "cast them to one dtype."
            )


def concat_members(a, b):
    """Two same-structured batches as one, `[a; b]` along the batch axis."""
    return keras.tree.map_structure(lambda u, v: ops.concatenate([u, v], axis=0), a, b)


def row_weights(sample_weight):
    """Float32 `(2n,)` weights of the rows `[x_i; x_j]` of a batch of pairs.

    From one weight per pair (both members get it) or a pair of per-member
    weights `{"original": w_i, "counterfactual": w_j}`.
    """
    if is_pair(sample_weight):
        w_i, w_j = sample_weight[ORIGINAL], sample_weight[COUNTERFACTUAL]
    else:
        w_i = w_j = sample_weight
    flat = lambda w: ops.cast(ops.reshape(w, (-1,)), "float32")  # noqa: E731
    return ops.concatenate([flat(w_i), flat(w_j)], axis=0)


def flatten_pair_batch(x, y, sample_weight=None):
    """A batch of pairs as one batch of `2n` rows `[x_i; x_j]`, checked.

    Returns `(x, y, sample_weight)` with the per-row weights of `row_weights`
    (None stays None). Unpaired batches are returned unchanged.

    Raises:
        ValueError: paired inputs with unpaired labels or the reverse, or
            members that differ (see `check_pair_members`).
    """
    check_pair_keys(x, "inputs")
    check_pair_keys(y, "labels")
    if not is_pair(x):
        if is_pair(y):
            raise ValueError(
                "Paired labels need paired inputs: x must be "
                f"{{'{ORIGINAL}': x_i, '{COUNTERFACTUAL}': x_j}}; received {x!r}."
            )
        return x, y, sample_weight
    if not is_pair(y):
        raise ValueError(
            "Paired inputs need paired labels: y must be "
            f"{{'{ORIGINAL}': y_i, '{COUNTERFACTUAL}': y_j}}; received {y!r}."
        )
    check_no_ragged(x, "inputs")
    check_pair_members(x[ORIGINAL], x[COUNTERFACTUAL], "inputs")
    check_pair_members(y[ORIGINAL], y[COUNTERFACTUAL], "labels")
    x = concat_members(x[ORIGINAL], x[COUNTERFACTUAL])
    y = concat_members(y[ORIGINAL], y[COUNTERFACTUAL])
    if sample_weight is not None:
        sample_weight = row_weights(sample_weight)
    return x, y, sample_weight


# === Resumable shuffling ===


class EpochSeed(keras.callbacks.Callback):
    """A shuffling seed that makes each epoch's order a function of `(seed, epoch)`.

    `tf.data`'s `shuffle(seed=..., reshuffle_each_iteration=True)` draws the
    order of an epoch from how many iterators the dataset has made in *this
    process*; `keras.callbacks.BackupAndRestore` keeps no iterator state, so
    a run resumed in a fresh process at epoch `e` would replay epoch 0's
    order. Pass an `EpochSeed` as the `seed` of `Pairs.to_dataset`,
    `Pairs.flatten` or `Pairs.random_relations`, and the same object to
    `fit`'s callbacks: every epoch's order (and random relations) is then
    drawn statelessly from `(seed, epoch)`, the epoch that `fit` announces
    in `on_epoch_begin`.

    The dataset reads the epoch when an iterator yields its first element
    (Keras makes the iterator of an epoch before, but reads it after,
    `on_epoch_begin`). Do not `.repeat()` such a dataset (the next epoch's
    first batches would be prefetched with the old epoch); use `set_epoch`
    to iterate it by hand. Create it outside a `tf.distribute` strategy's
    scope (its epoch is a plain host variable).

    Args:
        seed: the integer seed.

    Example:

    >>> import numpy as np, keras
    >>> x = np.random.rand(8, 3).astype("float32")
    >>> pairs = cfkeras.pairs.Pairs(x, x[::-1], np.zeros(8), np.ones(8))
    >>> seed = cfkeras.pairs.EpochSeed(0)
    >>> dataset = pairs.to_dataset(batch_size=4, seed=seed)
    >>> # model.fit(dataset, epochs=5, callbacks=[seed, keras.callbacks.BackupAndRestore(d)])
    >>> seed.set_epoch(3)  # or by hand: the batches of epoch 3
    >>> len(list(dataset))
    2
    """

    def __init__(self, seed):
        super().__init__()
        self.seed = int(seed)
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="data_epoch")

    def set_epoch(self, epoch):
        """The epoch whose order the datasets yield next."""
        self.epoch.assign(int(epoch))

    def on_epoch_begin(self, epoch, logs=None):
        self.set_epoch(epoch)

    def stream(self, index):
        """The stateless seed `(2,)` of random stream `index` of the current epoch."""
        base = tf.stack([tf.constant(self.seed, tf.int64), self.epoch.read_value()])
        return tf.random.experimental.stateless_fold_in(base, index)


def epoch_permutation(n, seed):
    """A random permutation of `range(n)`, int64, from a stateless seed `(2,)`."""
    return tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64), seed=seed)


def _check_seed(seed):
    if seed is not None and not isinstance(seed, (int, np.integer, EpochSeed)):
        raise ValueError(
            f"seed must be an int, a cfkeras.pairs.EpochSeed or None; received {seed!r}."
        )


def _epoch_indices(n, epoch_seed):
    """The dataset of `range(n)` in the order of the current epoch of `epoch_seed`."""
    indices = tf.data.Dataset.from_tensors(n).map(
        lambda size: epoch_permutation(size, epoch_seed.stream(0))
    )
    return indices.unbatch().apply(tf.data.experimental.assert_cardinality(n))


# === Pairs in memory ===


def _as_array(value, what):
    if isinstance(value, (tf.Tensor, tf.RaggedTensor)):
        return value
    array = np.asarray(value)
    if array.dtype == object:
        try:
            array = array.astype(str)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{what}: cannot be read as an array ({error}).") from error
    return array


def _has_nan(array):
    if isinstance(array, tf.RaggedTensor):
        array = array.flat_values
    array = np.asarray(array)
    return np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array))


def _length(value):
    if isinstance(value, tf.RaggedTensor):
        return int(value.nrows())
    return len(value)


def _check_leaf(name, a, b, n):
    for label, value in ((ORIGINAL, a), (COUNTERFACTUAL, b)):
        if _length(value) != n:
            raise ValueError(
                f"{name}: the {label} member has {_length(value)} examples, expected {n} "
                "(one per pair)."
            )
        if _has_nan(value):
            raise ValueError(f"{name}: the {label} member contains NaN or Inf values.")
    shape_a, shape_b = tuple(a.shape[1:]), tuple(b.shape[1:])
    ragged = isinstance(a, tf.RaggedTensor) or isinstance(b, tf.RaggedTensor)
    if not ragged and shape_a != shape_b:
        raise ValueError(
            f"{name}: original and counterfactual shapes differ, {shape_a} vs {shape_b} "
            "per example."
        )
    if tf.as_dtype(a.dtype) != tf.as_dtype(b.dtype):
        raise ValueError(
            f"{name}: original and counterfactual dtypes differ, {a.dtype} vs {b.dtype}."
        )


@dataclasses.dataclass(frozen=True)
class Pairs:
    """Validated counterfactual pairs held in memory, and their `tf.data` views.

    Args:
        original: inputs `x_i`: an array, a tensor, a ragged tensor, a list of
            strings, or a dict/tuple of those for multi-input models.
        counterfactual: inputs `x_j`, with the same structure, shapes and
            dtypes.
        label: labels `y_i` (class ids, binary targets or multi-hot rows).
        counterfactual_label: labels `y_j`, same form.
        sample_weight: optional weight per pair, or a pair
            `{"original": w_i, "counterfactual": w_j}` of per-member weights
            (e.g. `1 / k` for an original that sits in `k` pairs, so that
            every unique example counts once in the main loss).
        group_id: optional id per pair (e.g. the source group), kept for
            reporting.

    Raises:
        ValueError: empty input, members of different structure, shape or
            dtype, label arity mismatch, different numbers of examples, NaN or
            Inf values, or no pair whose labels differ.

    Example:

    >>> import numpy as np
    >>> x = np.random.rand(8, 3).astype("float32")
    >>> pairs = cfkeras.pairs.Pairs(x, x[::-1], np.zeros(8), np.ones(8))
    >>> dataset = pairs.to_dataset(batch_size=4, seed=0)
    """

    original: object
    counterfactual: object
    label: object
    counterfactual_label: object
    sample_weight: object = None
    group_id: object = None

    def __post_init__(self):
        for field in ("original", "counterfactual", "label", "counterfactual_label"):
            if getattr(self, field) is None:
                raise ValueError(
                    f"Pairs: `{field}` is None; a pair needs both members and both labels. "
                    "For single examples use an ordinary dataset of `(x, y)` (every cfkeras "
                    "trainer accepts one: main loss only, no pair terms)."
                )
        convert = lambda value, what: keras.tree.map_structure(
            lambda leaf: _as_array(leaf, what), value
        )
        object.__setattr__(self, "original", convert(self.original, "original"))
        object.__setattr__(self, "counterfactual", convert(self.counterfactual, "counterfactual"))
        object.__setattr__(self, "label", _as_array(self.label, "label"))
        object.__setattr__(
            self,
            "counterfactual_label",
            _as_array(self.counterfactual_label, "counterfactual_label"),
        )
        if self.sample_weight is not None:
            object.__setattr__(self, "sample_weight", convert(self.sample_weight, "sample_weight"))
        if self.group_id is not None:
            object.__setattr__(self, "group_id", np.asarray(self.group_id))
        self._validate()

    def _validate(self):
        n = _length(self.label)
        if n == 0:
            raise ValueError("Pairs: the input is empty (0 pairs).")
        try:
            keras.tree.assert_same_structure(self.original, self.counterfactual)
        except (ValueError, TypeError) as error:
            raise ValueError(
                f"Pairs: original and counterfactual inputs differ in structure: {error}"
            ) from error
        for k, (a, b) in enumerate(
            zip(
                keras.tree.flatten(self.original),
                keras.tree.flatten(self.counterfactual),
            )
        ):
            _check_leaf(f"input {k}", a, b, n)
        _check_leaf("labels", self.label, self.counterfactual_label, n)
        if self.sample_weight is not None:
            if isinstance(self.sample_weight, dict) and not is_pair(self.sample_weight):
                raise ValueError(
                    "sample_weight must be one weight per pair or a pair "
                    f"{{'{ORIGINAL}': ..., '{COUNTERFACTUAL}': ...}}."
                )
            for weight in keras.tree.flatten(self.sample_weight):
                if len(weight) != n:
                    raise ValueError(f"sample_weight has {len(weight)} entries for {n} pairs.")
                if _has_nan(weight) or np.any(np.asarray(weight) < 0):
                    raise ValueError("sample_weight must be finite and non-negative.")
        if self.group_id is not None and len(self.group_id) != n:
            raise ValueError(f"group_id has {len(self.group_id)} entries for {n} pairs.")
        equal = self.equal_label_mask()
        if equal.all():
            raise ValueError(
                "Pairs: every pair has equal labels; gradient supervision needs pairs "
                "whose labels differ."
            )
        if equal.any():
            warnings.warn(
                f"Pairs: {int(equal.sum())} of {n} pairs have equal labels; they add to "
                "the main loss but carry no gradient supervision.",
                stacklevel=4,  # _validate, __post_init__, the dataclass __init__, the caller
            )

    def __len__(self):
        return len(self.label)

    def _member_weights(self):
        """`(w_original, w_counterfactual)`, per member."""
        if is_pair(self.sample_weight):
            return self.sample_weight[ORIGINAL], self.sample_weight[COUNTERFACTUAL]
        return self.sample_weight, self.sample_weight

    def equal_label_mask(self):
        """Boolean `(pairs,)`: the two members have the same label."""
        a = np.asarray(self.label).reshape(len(self.label), -1)
        b = np.asarray(self.counterfactual_label).reshape(len(self.label), -1)
        return np.all(a == b, axis=1)

    # === Builders ===

    @classmethod
    def from_groups(cls, inputs, labels, group_ids, sample_weight=None):
        """Pairs from groups: the first member of each group is the original.

        Every later member of a group is a counterfactual of the first one
        (the layout of Kaushik et al.'s paired IMDb files); a group of `k`
        members gives `k - 1` pairs. Groups are taken in order of first
        appearance, and their members need not be contiguous.

        Args:
            inputs: examples (array, list of strings, or a structure of those).
            labels: one label per example.
            group_ids: one group id per example.
            sample_weight: optional weight per example; a pair takes the
                weight of its counterfactual member.

        Raises:
            ValueError: a group with a single member, or the errors of `Pairs`.
        """
        group_ids = np.asarray(group_ids)
        if len(group_ids) == 0:
            raise ValueError("from_groups: the input is empty (0 examples).")
        if len(group_ids) != len(labels):
            raise ValueError(f"from_groups: {len(labels)} labels for {len(group_ids)} group ids.")
        _, first, inverse, counts = np.unique(
            group_ids, return_index=True, return_inverse=True, return_counts=True
        )
        singles = group_ids[first[counts == 1]]
        if len(singles):
            raise ValueError(
                f"from_groups: {len(singles)} group(s) have a single member and so no "
                f"counterfactual, e.g. group id {singles[0].item()!r}."
            )
        original_index = first[inverse]
        member = np.arange(len(group_ids))
        members = member[member != original_index]
        originals = original_index[members]
        # Keep the groups in order of first appearance.
        order = np.argsort(originals, kind="stable")
        members, originals = members[order], originals[order]
        take = lambda value, index: keras.tree.map_structure(
            lambda leaf: _take(_as_array(leaf, "inputs"), index), value
        )
        labels = _as_array(labels, "labels")
        return cls(
            original=take(inputs, originals),
            counterfactual=take(inputs, members),
            label=_take(labels, originals),
            counterfactual_label=_take(labels, members),
            sample_weight=None if sample_weight is None else np.asarray(sample_weight)[members],
            group_id=group_ids[originals],
        )

    # === tf.data views ===

    def to_dataset(self, batch_size=32, shuffle=True, seed=None, drop_remainder=None):
        """One dataset of batched pairs, shuffled as pairs.

        Pairs are selected by index, so an original never leaves its
        counterfactual; with `shuffle` the order is re-drawn every epoch from
        `seed`.

        Args:
            batch_size: pairs per batch (each batch holds `2 * batch_size`
                examples in the main loss).
            shuffle: shuffle the pairs every epoch (for training).
            seed: shuffling seed: an int (TensorFlow's reshuffling, the same
                sequence of orders in every process), an `EpochSeed` (each
                epoch's order a function of `(seed, epoch)`, for resuming),
                or None.
            drop_remainder: drop the last partial batch, so that a compiled
                step is not traced again for it. Defaults to `shuffle`:
                training drops it, evaluation keeps every pair.

        Returns:
            A `tf.data.Dataset` of `(x, y)` or `(x, y, sample_weight)`.
        """
        x = make_pair(self.original, self.counterfactual)
        y = make_pair(self.label, self.counterfactual_label)
        return _indexed_dataset(
            len(self),
            (x, y),
            self.sample_weight,
            batch_size,
            shuffle,
            seed,
            drop_remainder,
        )

    def flatten(self, batch_size=32, shuffle=True, seed=None, drop_remainder=None):
        """Every member as an independent example (the augmentation baseline).

        Returns a dataset of `(x, y)` (or with sample weights) over the `2N`
        originals and counterfactuals, shuffled as individual examples;
        the arguments are those of `to_dataset`.
        """
        x = _stack(self.original, self.counterfactual)
        y = _stack(self.label, self.counterfactual_label)
        weight = None
        if self.sample_weight is not None:
            weight = _stack(*self._member_weights())
        return _indexed_dataset(
            2 * len(self), (x, y), weight, batch_size, shuffle, seed, drop_remainder
        )

    def with_singles(self, x, y, pairs_per_batch, singles_per_batch, seed=None):
        """Batches that mix these pairs with single (unpaired) examples.

        For few counterfactuals and many originals: every batch holds
        `pairs_per_batch` pairs and `singles_per_batch` singles, so that the
        GS term acts in every step while the main loss sees every example.
        A single `x` travels as the pair `(x, x)` with labels `(y, y)` and
        per-member weights `(c, 0)`: its duplicate adds nothing to the main
        loss, and the GS term skips it (equal labels under the label-aware
        contrast; identical points, counted in `gs_skipped`, with
        `gradient_of="label_logit"`). The real members of a batch weigh
        `c = 2 (p + s) / (2p + s)` (times the pairs' own weights), so that
        the main loss is the mean over the batch's `2p + s` real examples.
        Pair metrics (`pair_accuracy`, `flip_rate`) count the singles as
        pairs of two equal members.

        An epoch is `len(y) // singles_per_batch` batches: every single
        once, re-shuffled every epoch (the last partial batch dropped). The
        pairs come from a stream re-shuffled on every pass and repeated as
        needed, which restarts every epoch. Training on this dataset with
        `gs_weight=0` (the augmentation control) and with `gs_weight > 0`
        (+ GS) sees the same batches in the same order for the same `seed`.

        Args:
            x: the single examples, structured as one member of a pair.
            y: their labels, in the form of the pairs' labels.
            pairs_per_batch: pairs per batch, `p` (at most `len(self)`).
            singles_per_batch: singles per batch, `s`.
            seed: shuffling seed (pairs: `seed`; singles: `seed + 1`).

        Returns:
            A `tf.data.Dataset` of `(x, y, sample_weight)` batches of
            `p + s` pairs with per-member weights.

        Example:

        >>> import numpy as np
        >>> x = np.random.rand(8, 3).astype("float32")
        >>> pairs = cfkeras.pairs.Pairs(x, x[::-1], np.zeros(8), np.ones(8))
        >>> singles = np.random.rand(40, 3).astype("float32")
        >>> dataset = pairs.with_singles(singles, np.zeros(40), 2, 8, seed=0)
        """
        n_pairs = len(self)
        y = _as_array(y, "labels")
        n_singles = len(y)
        if not 1 <= pairs_per_batch <= n_pairs:
            raise ValueError(
                f"pairs_per_batch must be in [1, {n_pairs}] (the pairs); received "
                f"{pairs_per_batch}."
            )
        if not 1 <= singles_per_batch <= n_singles:
            raise ValueError(
                f"singles_per_batch must be in [1, {n_singles}] (the singles); received "
                f"{singles_per_batch}."
            )
        x = keras.tree.map_structure(lambda leaf: _as_array(leaf, "inputs"), x)
        try:
            keras.tree.assert_same_structure(x, self.original)
        except (ValueError, TypeError) as error:
            raise ValueError(f"with_singles: x differs from the pairs' inputs: {error}") from error
        for leaf in keras.tree.flatten(x):
            if len(leaf) != n_singles:
                raise ValueError(f"with_singles: {len(leaf)} inputs for {n_singles} labels.")
        if np.shape(y)[1:] != np.shape(self.label)[1:]:
            raise ValueError(
                f"with_singles: labels of shape {np.shape(y)[1:]} per example, the pairs' "
                f"are {np.shape(self.label)[1:]}."
            )
        p, s = pairs_per_batch, singles_per_batch
        scale = 2.0 * (p + s) / (2 * p + s)
        pair_x = keras.tree.map_structure(_to_tensor, make_pair(self.original, self.counterfactual))
        pair_y = keras.tree.map_structure(
            _to_tensor, make_pair(self.label, self.counterfactual_label)
        )
        ones = np.ones(n_pairs, np.float32)
        w_i, w_j = self._member_weights() if self.sample_weight is not None else (ones, ones)
        pair_w = [tf.constant(np.asarray(w, np.float32).reshape(-1) * scale) for w in (w_i, w_j)]
        single_x = keras.tree.map_structure(_to_tensor, x)
        single_y = _to_tensor(y)

        def gather(pair_index, single_index):
            take = lambda value, index: keras.tree.map_structure(  # noqa: E731
                lambda t: tf.gather(t, index), value
            )
            join = lambda a, b: keras.tree.map_structure(  # noqa: E731
                lambda u, v: tf.concat([u, tf.cast(v, u.dtype)], 0), a, b
            )
            px, py = take(pair_x, pair_index), take(pair_y, pair_index)
            sx, sy = take(single_x, single_index), tf.gather(single_y, single_index)
            zeros = tf.zeros([s], tf.float32)
            features = make_pair(join(px[ORIGINAL], sx), join(px[COUNTERFACTUAL], sx))
            labels = make_pair(join(py[ORIGINAL], sy), join(py[COUNTERFACTUAL], sy))
            weights = make_pair(
                tf.concat([tf.gather(pair_w[0], pair_index), zeros + scale], 0),
                tf.concat([tf.gather(pair_w[1], pair_index), zeros], 0),
            )
            return features, labels, weights

        pair_indices = (
            tf.data.Dataset.range(n_pairs)
            .shuffle(n_pairs, seed=seed, reshuffle_each_iteration=True)
            .repeat()
            .batch(p, drop_remainder=True)
        )
        single_indices = (
            tf.data.Dataset.range(n_singles)
            .shuffle(
                n_singles, seed=None if seed is None else seed + 1, reshuffle_each_iteration=True
            )
            .batch(s, drop_remainder=True)
        )
        dataset = tf.data.Dataset.zip(pair_indices, single_indices)
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(n_singles // s))
        return dataset.map(gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

    def random_relations(self, batch_size=32, partners="any", seed=None, drop_remainder=True):
        """The paper's control: the same examples, re-paired at random every epoch.

        The pool is every member (originals and counterfactuals). Every epoch
        it is split at random into `len(self)` pairs, so that each example
        appears exactly once per epoch, as in `flatten` and `to_dataset`: the
        main loss sees the same examples, and only the relations differ.

        Args:
            batch_size: pairs per batch.
            partners: `"any"`: label-blind partners, as in the paper's ablation
                (pairs whose labels happen to be equal then carry no GS signal
                under the cfkeras sign convention); `"different_label"`: a
                random matching between examples of different labels — every
                pair differs unless one label holds more than half of the
                pool (examples are sorted by label in random order, and the
                first half is matched with the second).
            seed: seed of the matching, re-drawn every epoch: an int, an
                `EpochSeed` (the matching, the order and the orientation of
                every epoch a function of `(seed, epoch)`) or None.
            drop_remainder: drop the last partial batch (default: training).

        Returns:
            A `tf.data.Dataset` of pairs in the form of `to_dataset`, with
            per-member sample weights (a pair of weights) if the pairs have
            weights.
        """
        if partners not in PARTNERS:
            raise ValueError(f"partners must be one of {PARTNERS}; received {partners!r}.")
        _check_seed(seed)
        x = keras.tree.map_structure(_to_tensor, _stack(self.original, self.counterfactual))
        y = _to_tensor(_stack(self.label, self.counterfactual_label))
        weight = None
        if self.sample_weight is not None:
            weight = _to_tensor(_stack(*self._member_weights()))
        half, pool = len(self), 2 * len(self)
        rows = np.asarray(_stack(self.label, self.counterfactual_label)).reshape(pool, -1)
        label_class = tf.constant(np.unique(rows, axis=0, return_inverse=True)[1].reshape(-1))

        def sort_by_label(permutation):
            # "different_label": the first half is matched with the second.
            if partners == "different_label":
                order = tf.argsort(tf.gather(label_class, permutation), stable=True)
                permutation = tf.gather(permutation, order)
            return permutation

        def match(permutation):
            permutation = sort_by_label(permutation)
            return tf.data.Dataset.from_tensor_slices((permutation[:half], permutation[half:]))

        def orient(members, randomness):
            # Which member comes first is random, so that no label is always
            # the "original" (it matters with both_directions=False).
            first, second = members
            swap = tf.equal(tf.math.floormod(randomness, 2), 1)
            return tf.where(swap, second, first), tf.where(swap, first, second)

        def gather(first, second):
            pick = lambda i: keras.tree.map_structure(lambda t: tf.gather(t, i), x)
            features = make_pair(pick(first), pick(second))
            labels = make_pair(tf.gather(y, first), tf.gather(y, second))
            if weight is None:
                return features, labels
            return features, labels, make_pair(tf.gather(weight, first), tf.gather(weight, second))

        def epoch_matching(_):
            # Stateless: the matching, order and orientation of (seed, epoch).
            permutation = sort_by_label(epoch_permutation(pool, seed.stream(0)))
            first, second = permutation[:half], permutation[half:]
            if partners == "different_label":
                order = epoch_permutation(half, seed.stream(1))
                first, second = tf.gather(first, order), tf.gather(second, order)
            swap = tf.random.stateless_uniform(
                (half,), seed=seed.stream(2), maxval=2, dtype=tf.int64
            )
            return orient((first, second), swap)

        if isinstance(seed, EpochSeed):
            dataset = tf.data.Dataset.from_tensors(0).map(epoch_matching).unbatch()
        else:
            permutations = tf.data.Dataset.range(pool).shuffle(
                pool, seed=seed, reshuffle_each_iteration=True
            )
            matched = permutations.batch(pool).flat_map(match)
            if partners == "different_label":
                matched = matched.shuffle(
                    half, seed=None if seed is None else seed + 1, reshuffle_each_iteration=True
                )
            randomness = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
            dataset = tf.data.Dataset.zip(matched, randomness).map(orient)
        dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
        # flat_map hides the length from Keras, which would warn that the
        # data ran out at the end of every first epoch.
        batches = half // batch_size if drop_remainder else -(-half // batch_size)
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(batches))
        return dataset.map(gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def _to_tensor(value):
    if isinstance(value, (tf.Tensor, tf.RaggedTensor)):
        return value
    return tf.convert_to_tensor(value)


def _take(value, index):
    if isinstance(value, (tf.Tensor, tf.RaggedTensor)):
        return tf.gather(value, index)
    return value[index]


def _stack(a, b):
    def concat(u, v):
        if isinstance(u, (tf.Tensor, tf.RaggedTensor)) or isinstance(
            v, (tf.Tensor, tf.RaggedTensor)
        ):
            return tf.concat([u, v], axis=0)
        return np.concatenate([u, v], axis=0)

    return keras.tree.map_structure(concat, a, b)


def _indexed_dataset(n, data, weight, batch_size, shuffle, seed, drop_remainder):
    """Batches of `data` selected by shuffled indices, gathered per batch."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; received {batch_size}.")
    tensors = keras.tree.map_structure(_to_tensor, data)
    if weight is not None:
        tensors = tensors + (keras.tree.map_structure(_to_tensor, weight),)
    _check_seed(seed)
    if shuffle and isinstance(seed, EpochSeed):
        indices = _epoch_indices(n, seed)
    else:
        indices = tf.data.Dataset.range(n)
    if shuffle and not isinstance(seed, EpochSeed):
        indices = indices.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    if drop_remainder is None:
        drop_remainder = shuffle
    indices = indices.batch(batch_size, drop_remainder=drop_remainder)
    gather = lambda index: keras.tree.map_structure(lambda t: tf.gather(t, index), tensors)
    return indices.map(gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def map_inputs(dataset, function):
    """Applies `function` to the inputs of every member of a paired dataset.

    Use it to tokenize text pairs: `map_inputs(dataset, vectorizer)` maps
    both `x["original"]` and `x["counterfactual"]` with the same function.
    Unpaired inputs are mapped directly.
    """

    def apply(x, *rest):
        if is_pair(x):
            x = make_pair(function(x[ORIGINAL]), function(x[COUNTERFACTUAL]))
        else:
            x = function(x)
        return (x, *rest)

    return dataset.map(apply, num_parallel_calls=tf.data.AUTOTUNE)
