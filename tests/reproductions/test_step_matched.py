"""Every GS row and its control see identical batches in identical order, from
identical initial weights, for each seed (IMDb: counterfactual pairs, random
pairs, few counterfactuals; SNLI: counterfactual pairs with main-loss
weights), and differ in the GS settings alone."""

import argparse

import keras
import numpy as np
import pytest

from cfkeras.reproductions import imdb_table3, snli_table3


def batches(dataset, epochs=2):
    """Every array of every batch of `epochs` passes, in order."""
    return [
        [np.asarray(leaf) for leaf in keras.tree.flatten(batch)]
        for _ in range(epochs)
        for batch in dataset
    ]


def assert_same(a, b):
    assert len(a) == len(b)
    for u, v in zip(a, b):
        assert len(u) == len(v)
        for p, q in zip(u, v):
            np.testing.assert_array_equal(p, q)


def assert_same_weights(a, b):
    for u, v in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(u, v)


@pytest.fixture(scope="module")
def imdb():
    def load(*extra):
        args = imdb_table3.parse_args(
            ["--limit", "40", "--members", "2", "--sequence-length", "12"]
            + ["--vocabulary-size", "200", "--pairs-per-batch", "4", *extra]
        )
        vectorize, tokens, _ = imdb_table3.load_data(args)
        return args, vectorize.vocabulary_size(), tokens

    return load


@pytest.mark.parametrize(
    "gs_row, control_row, extra",
    [
        ("gs", "control", ()),
        ("gs_random_logit", "control_random_any", ()),
        ("gs_random_logit_one_way", "control_random_any", ()),
        ("gs", "control", ("--counterfactuals", "10")),
    ],
)
def test_imdb_gs_rows_and_their_controls_match_step_for_step(imdb, gs_row, control_row, extra):
    args, vocabulary, tokens = imdb(*extra)
    assert imdb_table3.CONTROLS[gs_row] == control_row
    for seed in (0, 1):
        gs = imdb_table3.prepare(args, gs_row, seed, vocabulary, tokens)
        control = imdb_table3.prepare(args, control_row, seed, vocabulary, tokens)
        assert_same(batches(gs[0]), batches(control[0]))
        assert_same_weights(gs[2], control[2])
        assert gs[2].gs_weight == args.gs_weight and control[2].gs_weight == 0.0
        for key in ("class_selection", "both_directions", "stop_target_gradient"):
            if key == "both_directions" and gs_row.endswith("one_way"):
                assert not gs[2].both_directions  # what the row is about
                continue
            assert getattr(gs[2], key) == getattr(control[2], key)
    # Another seed, other batches: the comparison above can fail.
    other = imdb_table3.prepare(args, control_row, 1, vocabulary, tokens)
    first = imdb_table3.prepare(args, control_row, 0, vocabulary, tokens)
    with pytest.raises(AssertionError):
        assert_same(batches(first[0], 1), batches(other[0], 1))
    if extra:  # few counterfactuals: every batch holds pairs and singles
        for _, y, w in first[0]:
            labels = (y["original"].numpy(), y["counterfactual"].numpy())
            assert (labels[0] != labels[1]).any() and (w["counterfactual"].numpy() == 0).any()


def test_few_counterfactual_batches_have_the_data_share_of_pairs():
    assert imdb_table3.mixed_batch_sizes(50, 1657) == (1, 30)
    assert imdb_table3.mixed_batch_sizes(200, 1507) == (3, 26)
    assert imdb_table3.mixed_batch_sizes(800, 907) == (10, 12)
    assert imdb_table3.mixed_batch_sizes(1700, 7) == (15, 2)  # at least one single


def test_snli_gs_rows_and_their_controls_match_step_for_step(shared_dir):
    args = snli_table3.parse_args(
        ["--limit", "12", "--members", "2", "--batch-size", "16", "--sequence-length", "8"]
        + ["--hidden-units", "8", "--data-dir", str(shared_dir / "data" / "cad")]
    )
    data = snli_table3.load_data(args)
    for gs_row in ("gs", "gs_ground_truth", "gs_random_any"):
        control_row = snli_table3.CONTROLS[gs_row]
        gs = snli_table3.prepare(args, gs_row, 0, data)
        control = snli_table3.prepare(args, control_row, 0, data)
        assert_same(batches(gs[0]), batches(control[0]))
        assert_same_weights(gs[3], control[3])
        assert control[3].gs_weight == 0.0 and gs[3].gs_weight == args.gs_weight
    assert snli_table3.prepare(args, "gs_ground_truth", 0, data)[3].class_selection == (
        "ground_truth"
    )


def test_parse_args_learning_rate_alias_and_few_rows():
    args = imdb_table3.parse_args(["--learning-rate", "4"])
    assert args.learning_rates == [4.0]
    few = imdb_table3.parse_args(["--counterfactuals", "50"])
    assert few.counterfactuals == 50 and few.rows == list(imdb_table3.FEW_ROWS)
    with pytest.raises(SystemExit):
        imdb_table3.parse_args(["--counterfactuals", "50", "--rows", "gs_random_any"])
    assert isinstance(args, argparse.Namespace)
