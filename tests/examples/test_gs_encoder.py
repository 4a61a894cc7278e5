"""`examples/gs_encoder.py`'s fine-tuned modes end to end on a tiny BERT (no
MiniLM, no download): the grid runs through `main`, resumes from its partial
file, and the control (λ = 0) and GS rows start from the same weights and see
the same batches; the control is a plain Keras fit of the same model on the
flattened pair batches."""

import json

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf
from example_scripts import load_example

import cfkeras
from cfkeras.datasets.snli_cad import SnliGroups
from cfkeras.pairs import flatten_pair_batch

WORDS = [f"w{k}" for k in range(40)]
VOCABULARY = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
LENGTH = 12


def tiny_encoder(length):
    """A stand-in for `load_minilm`: a 2-layer BERT (hidden 8), the same
    "pretrained" weights on every call, and its preprocessor."""
    config = dict(
        vocabulary_size=len(VOCABULARY),
        num_layers=2,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        max_sequence_length=LENGTH,
    )
    if "weights" not in PRETRAINED:
        PRETRAINED["weights"] = keras_hub.models.BertBackbone(**config).get_weights()
    backbone = keras_hub.models.BertBackbone(**config)
    backbone.set_weights(PRETRAINED["weights"])
    tokenizer = keras_hub.tokenizers.BertTokenizer(vocabulary=VOCABULARY)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        tokenizer, sequence_length=length
    )
    return backbone, preprocessor


PRETRAINED = {}


class DenseAdamW(keras.optimizers.AdamW):
    """AdamW on dense gradients, as cfkeras's trainers apply them. Keras
    applies a sparse embedding gradient (`tf.IndexedSlices`, the token ids
    of the full mode) to Adam's moments otherwise than its dense equal when
    a batch repeats a token, so a plain fit with AdamW itself drifts from
    the control by design, not by a difference in data or weights."""

    def apply(self, grads, trainable_variables=None):
        dense = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for g in grads]
        return super().apply(dense, trainable_variables)


def sentences(rng, n):
    return np.array([" ".join(rng.choice(WORDS, rng.integers(3, 9))) for _ in range(n)], object)


def imdb_texts(args):
    """IMDb-shaped texts: 16 training pairs, 8 of every other split."""
    rng = np.random.default_rng(0)
    texts = {}
    for split, n in (("train", 16), ("validation", 8), ("test", 8)):
        label = rng.integers(0, 2, n)
        texts[split] = (sentences(rng, n), sentences(rng, n), label, 1 - label, np.arange(n))
    for name in ("amazon", "twitter", "yelp"):
        texts[name] = (sentences(rng, 8), rng.integers(0, 2, 8))
    return texts


def snli_texts(args):
    """SNLI-shaped groups: 4 training groups (16 pairs), 2 of every other split."""
    rng = np.random.default_rng(0)

    def groups(n):
        label = rng.integers(0, 3, n)
        return SnliGroups(
            premise=sentences(rng, n),
            hypothesis=sentences(rng, n),
            label=label.astype("int32"),
            edit_premise=sentences(rng, 4 * n).reshape(n, 4),
            edit_hypothesis=sentences(rng, 4 * n).reshape(n, 4),
            edit_label=((label[:, None] + np.array([1, 2, 1, 2])) % 3).astype("int32"),
            edit_changed=np.array([["premise", "premise", "hypothesis", "hypothesis"]] * n),
        )

    return {"train": groups(4), "validation": groups(2), "test": groups(2)}


@pytest.mark.parametrize(
    "mode, dataset, extra",
    [("upper", "imdb", "--start-layer 1 --pairs 8"), ("full", "snli", "--pairs all")],
)
def test_fine_tuned_modes_run_resume_and_pair_the_rows(mode, dataset, extra, tmp_path, monkeypatch):
    script = load_example("gs_encoder")
    monkeypatch.setattr(script, "load_encoder", tiny_encoder)
    monkeypatch.setattr(script, "load_texts", imdb_texts if dataset == "imdb" else snli_texts)

    # Record what every run trains: its initial weights, first batch and losses.
    fits, datasets, used_args = [], [], []

    class Recording(cfkeras.GradientSupervisionModel):
        def fit(self, *args, **kwargs):
            weights = [w.numpy() for w in self.model.weights]
            history = super().fit(*args, **kwargs)
            fits.append((self.gs_weight, weights, history.history))
            return history

    to_dataset = cfkeras.Pairs.to_dataset

    def recording_to_dataset(pairs, **kwargs):
        # A second dataset from the same call yields the batches fit reads.
        datasets.append((pairs, kwargs, next(iter(to_dataset(pairs, **kwargs)))))
        return to_dataset(pairs, **kwargs)

    monkeypatch.setattr(cfkeras, "GradientSupervisionModel", Recording)
    monkeypatch.setattr(cfkeras.Pairs, "to_dataset", recording_to_dataset)

    run_one = script.run_one
    calls = []

    def interrupted(args, *rest):
        calls.append(rest[3:])  # (seed, lr, gs_weight)
        used_args.append(args)
        if len(calls) == 2 and not (tmp_path / "done").exists():
            (tmp_path / "done").touch()
            raise KeyboardInterrupt  # the session ends during the second run
        return run_one(args, *rest)

    monkeypatch.setattr(script, "run_one", interrupted)
    argv = (
        f"--mode {mode} --dataset {dataset} {extra} --seeds 0 --learning-rates 1e-3 "
        f"--gs-weights 1 --epochs 2 --batch-size 4 --length {LENGTH} "
        f"--out {tmp_path} --cache-dir {tmp_path / 'cache'}"
    ).split()
    stem = f"gs_encoder_{mode}_{dataset}"
    with pytest.raises(KeyboardInterrupt):
        script.main(argv)
    partial = json.loads((tmp_path / f"{stem}.partial.json").read_text())
    size = next(iter(partial["runs"]))
    assert list(partial["runs"][size]) == ["control"]
    script.main(argv)  # resumes: only the GS run is left
    assert calls == [(0, 1e-3, 0.0), (0, 1e-3, 1.0), (0, 1e-3, 1.0)]
    assert len(fits) == 2

    report = json.loads((tmp_path / f"{stem}.json").read_text())
    assert not (tmp_path / f"{stem}.partial.json").exists()
    runs = report["runs"][size]
    assert runs["control"] == partial["runs"][size]["control"]
    assert set(runs) == {"control", "gs"}
    assert set(runs["gs"]["lr=0.001,gs=1"]["0"]["scores"]) == set(script.COLUMNS[dataset])
    assert set(report["summary"][size]) == {"control", "gs"}
    if mode == "upper":
        assert list((tmp_path / "cache").glob("hidden_*.npz"))

    # Same initial weights, same first batch; different losses.
    (w_control, weights_control, control), (w_gs, weights_gs, gs) = fits
    assert (w_control, w_gs) == (0.0, 1.0)
    for a, b in zip(weights_control, weights_gs, strict=True):
        np.testing.assert_array_equal(a, b)
    (pairs, kwargs, first_control), (_, _, first_gs) = datasets[-2:]
    keras.tree.map_structure(np.testing.assert_array_equal, first_control, first_gs)
    assert not np.allclose(control["loss"], gs["loss"])
    assert np.all(np.asarray(gs["gs_loss"]) > 0)

    # The control is a plain Keras fit of the same model on the pair batches,
    # flattened to [originals; counterfactuals].
    args = used_args[0]
    keras.utils.set_random_seed(0)
    model, _ = script.build(args)
    for a, b in zip(model.get_weights(), weights_control, strict=True):
        np.testing.assert_array_equal(a, b)
    model.compile(
        optimizer=DenseAdamW.from_config(script.optimizer(args, 1e-3).get_config()),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=True,
    )
    flat = to_dataset(pairs, **kwargs).map(lambda *b: flatten_pair_batch(*b)[: len(b)])
    plain = model.fit(flat, epochs=args.epochs, verbose=0).history
    np.testing.assert_allclose(control["loss"], plain["loss"], rtol=1e-5)
    assert not np.allclose(gs["loss"], plain["loss"], rtol=1e-3)
