"""Tests for `cfkeras.datasets.snli_cad`: grouping, irregular edits, malformed
files, sources, pairs, and the real files."""

import doctest
import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest

import cfkeras
from cfkeras.datasets import snli_cad
from cfkeras.datasets.snli_cad import CAD_DIR_ENV, SnliGroups, load_snli_groups

PACKAGED_DIR = Path(snli_cad.__file__).parent / "data" / "snli_cad"
SPLITS = ("train", "dev", "test")
HEADER = "sentence1\tsentence2\tgold_label\n"
FIELDS = [
    "premise",
    "hypothesis",
    "label",
    "edit_premise",
    "edit_hypothesis",
    "edit_label",
    "edit_changed",
]


@pytest.fixture(autouse=True)
def _no_cad_dir_env(monkeypatch):
    monkeypatch.delenv(CAD_DIR_ENV, raising=False)


def write_split(root, split, original, revised):
    """Writes `original` and `revised` (lists of rows) in the upstream layout."""
    for part, rows in (("original", original), ("revised_combined", revised)):
        path = root / "NLI" / part / f"{split}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = ["\t".join(row) + "\n" if isinstance(row, tuple) else row for row in rows]
        path.write_text(HEADER + "".join(lines), encoding="utf-8", newline="")
    return root


def assert_groups_equal(a, b):
    assert isinstance(a, SnliGroups) and isinstance(b, SnliGroups)
    for field in FIELDS:
        x, y = getattr(a, field), getattr(b, field)
        assert x.dtype == y.dtype, field
        np.testing.assert_array_equal(x, y, err_msg=field)


# A tiny fixture: two groups, the first with every irregular kind.
P0, H0 = "A dog runs.", "An animal moves."
P1, H1 = 'A man says "hi".', "A man talks."
Q1 = '"A man says ""hi""."'  # P1 quoted as in the files
ORIGINAL = [(P0, H0, "entailment"), (Q1, H1, "neutral")]
REVISED = [
    ("A cat sleeps.", H0, "neutral"),  # premise
    (P0, "An animal sleeps.", "contradiction"),  # hypothesis
    ("A dog  runs.", "An animal  moves.", "neutral"),  # both, whitespace only
    (P0, H0, "contradiction"),  # none: identical, another label
    ('"A man says ""hi"" loudly."', H1, "entailment"),  # premise (quoted)
    ("A man waves.", H1, "contradiction"),  # premise
    (Q1, "A man is silent.", "contradiction"),  # hypothesis
    (Q1, "A man speaks.", "neutral"),  # same label
]


@pytest.fixture
def tiny(tmp_path):
    return write_split(tmp_path, "dev", ORIGINAL, REVISED)


# === Grouping on a tiny fixture ===


def test_groups_align_originals_with_their_four_edits(tiny):
    groups = load_snli_groups("dev", data_dir=tiny)
    assert len(groups) == 2
    np.testing.assert_array_equal(groups.group_id, [0, 1])
    assert groups.premise.tolist() == [P0, P1]
    assert groups.hypothesis.tolist() == [H0, H1]
    assert groups.label.tolist() == [0, 1]
    assert groups.edit_premise.tolist() == [
        ["A cat sleeps.", P0, "A dog  runs.", P0],
        ['A man says "hi" loudly.', "A man waves.", P1, P1],
    ]
    assert groups.edit_hypothesis.tolist() == [
        [H0, "An animal sleeps.", "An animal  moves.", H0],
        [H1, H1, "A man is silent.", "A man speaks."],
    ]
    assert groups.edit_label.tolist() == [[1, 2, 1, 2], [0, 2, 2, 1]]
    assert groups.edit_changed.tolist() == [
        ["premise", "hypothesis", "both", "none"],
        ["premise", "premise", "hypothesis", "hypothesis"],
    ]
    for field in ("premise", "hypothesis", "edit_premise", "edit_changed"):
        assert getattr(groups, field).dtype == object, field
    assert groups.label.dtype == np.int32 and groups.edit_label.dtype == np.int32
    assert groups.edit_label.shape == groups.edit_changed.shape == (2, 4)


def test_irregular_edits_are_kept_and_counted(tiny):
    groups = load_snli_groups("dev", data_dir=tiny)
    assert groups.changed_both.tolist() == [[0, 2]]
    assert groups.identical_edits.tolist() == [[0, 3]]
    assert groups.whitespace_only_edits.tolist() == [[0, 2]]
    assert groups.same_label_edits.tolist() == [[1, 3]]
    assert groups.irregular_counts == {
        "both": 1,
        "none": 1,
        "whitespace_only": 1,
        "same_label": 1,
    }


def test_to_pairs_pairs_each_original_with_its_edits(tiny):
    groups = load_snli_groups("dev", data_dir=tiny)
    with pytest.warns(UserWarning, match="1 of 8 pairs have equal labels"):
        pairs = groups.to_pairs()
    assert isinstance(pairs, cfkeras.Pairs)
    assert len(pairs) == 8
    assert pairs.group_id.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert pairs.original["premise"].tolist() == [P0] * 4 + [P1] * 4
    assert pairs.original["hypothesis"].tolist() == [H0] * 4 + [H1] * 4
    assert pairs.counterfactual["premise"].tolist() == groups.edit_premise.ravel().tolist()
    assert pairs.counterfactual["hypothesis"].tolist() == groups.edit_hypothesis.ravel().tolist()
    assert pairs.label.tolist() == [0] * 4 + [1] * 4
    assert pairs.counterfactual_label.tolist() == groups.edit_label.ravel().tolist()
    assert pairs.label.dtype == np.int32


def test_to_pairs_with_edit_pairs_and_one_hot(tiny):
    groups = load_snli_groups("dev", data_dir=tiny)
    with pytest.warns(UserWarning, match="equal labels"):
        pairs = groups.to_pairs(include_edit_pairs=True, one_hot=True)
    # Group 0 edit labels [1, 2, 1, 2]: 4 pairs differ; group 1 [0, 2, 2, 1]: 5.
    assert len(pairs) == 8 + 4 + 5
    assert pairs.group_id.tolist() == [0] * 8 + [1] * 9
    edit_pairs = [(0, 1), (0, 3), (1, 2), (2, 3)]
    for row, (a, b) in enumerate(edit_pairs, start=4):
        assert pairs.original["premise"][row] == groups.edit_premise[0, a]
        assert pairs.counterfactual["hypothesis"][row] == groups.edit_hypothesis[0, b]
        assert pairs.label[row].argmax() == groups.edit_label[0, a]
        assert pairs.counterfactual_label[row].argmax() == groups.edit_label[0, b]
    assert pairs.label.shape == (17, 3) and pairs.label.dtype == np.float32
    np.testing.assert_array_equal(pairs.label.sum(axis=1), 1.0)
    is_edit_pair = np.r_[[False] * 4, [True] * 4, [False] * 4, [True] * 5]
    assert not pairs.equal_label_mask()[is_edit_pair].any()


# === Malformed files ===


@pytest.mark.parametrize(
    "part, row, message",
    [
        ("original", ("a", "b"), r"original/dev.tsv: line 3 \(row 1\): expected 3"),
        ("revised_combined", ("a", "b", "neutral", "x"), r"revised_combined/dev.tsv: line 5"),
        ("original", ("a", "b", "Neutral"), r"original/dev.tsv: line 3 .*label 'Neutral'"),
        ("revised_combined", ("a", "b", "-"), r"revised_combined/dev.tsv: line 5 .*label '-'"),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path, part, row, message):
    original, revised = list(ORIGINAL), list(REVISED)
    if part == "original":
        original[1] = row
    else:
        revised[3] = row
    write_split(tmp_path, "dev", original, revised)
    with pytest.raises(ValueError, match=message):
        load_snli_groups("dev", data_dir=tmp_path)


def test_a_group_without_four_edits_fails(tmp_path):
    write_split(tmp_path, "dev", ORIGINAL, REVISED[:7])
    with pytest.raises(
        ValueError,
        match=r"revised_combined/dev.tsv has 7 rows for the 2 originals .*expected 4 x 2 = 8"
        r".*original at row 1 \(line 3\) .* has 3 edit",
    ):
        load_snli_groups("dev", data_dir=tmp_path)


def test_edits_without_an_original_fail(tmp_path):
    write_split(tmp_path, "dev", ORIGINAL[:1], REVISED[:5])
    with pytest.raises(ValueError, match=r"rows from row 4 \(line 6\) .* have no original"):
        load_snli_groups("dev", data_dir=tmp_path)


def test_wrong_header_and_empty_file_fail(tmp_path):
    write_split(tmp_path, "dev", ORIGINAL, REVISED)
    path = tmp_path / "NLI" / "original" / "dev.tsv"
    path.write_text(path.read_text().replace("gold_label", "label", 1))
    with pytest.raises(ValueError, match=r"original/dev.tsv: line 1: expected the header"):
        load_snli_groups("dev", data_dir=tmp_path)
    path.write_text(HEADER)
    with pytest.raises(ValueError, match=r"original/dev.tsv: contains no rows"):
        load_snli_groups("dev", data_dir=tmp_path)


def test_bad_arguments_and_missing_files(tmp_path):
    with pytest.raises(ValueError, match="Unknown split 'val'"):
        load_snli_groups("val")
    with pytest.raises(ValueError, match="Unknown source"):
        load_snli_groups("dev", source="hub")
    with pytest.raises(FileNotFoundError, match="NLI/original/test.tsv"):
        load_snli_groups("test", data_dir=tmp_path)


# === Sources ===


@pytest.mark.parametrize("split", SPLITS)
def test_packaged_copy_matches_pinned_checksum(split):
    for part in snli_cad.PARTS:
        data = gzip.decompress((PACKAGED_DIR / part / f"{split}.tsv.gz").read_bytes())
        assert hashlib.sha256(data).hexdigest() == snli_cad.SHA256[(part, split)]


def test_packaged_copy_is_byte_identical_to_upstream(shared_dir):
    cad = shared_dir / "data" / "cad"
    for split in SPLITS:
        for part in snli_cad.PARTS:
            packaged = gzip.decompress((PACKAGED_DIR / part / f"{split}.tsv.gz").read_bytes())
            assert packaged == (cad / "NLI" / part / f"{split}.tsv").read_bytes()
    assert (PACKAGED_DIR / "LICENSE").read_bytes() == (cad / "LICENSE").read_bytes()


def test_packaged_readme_names_source_and_files():
    readme = (PACKAGED_DIR / "README.md").read_text(encoding="utf-8")
    assert snli_cad.UPSTREAM_COMMIT in readme
    for (part, split), digest in snli_cad.SHA256.items():
        assert f"NLI/{part}/{split}.tsv" in readme and digest in readme


def test_packaged_data_is_small():
    size = sum(p.stat().st_size for p in PACKAGED_DIR.rglob("*") if p.is_file())
    assert size < 400_000


def test_packaged_data_dir_and_env_var_agree(shared_dir, monkeypatch):
    cad = shared_dir / "data" / "cad"
    packaged = load_snli_groups("dev")
    assert_groups_equal(packaged, load_snli_groups("validation", data_dir=cad))
    monkeypatch.setenv(CAD_DIR_ENV, str(cad))
    assert_groups_equal(packaged, load_snli_groups("dev"))


def test_data_dir_overrides_env_var(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv(CAD_DIR_ENV, str(tiny))
    assert len(load_snli_groups("dev")) == 2
    other = write_split(tmp_path / "other", "dev", ORIGINAL[:1], REVISED[:4])
    assert len(load_snli_groups("dev", data_dir=other)) == 1


def test_download_uses_pinned_urls_and_verifies_sha256(tmp_path, monkeypatch):
    # A file:// origin runs the real keras.utils.get_file path without network.
    origin = tmp_path / "origin"
    for part in snli_cad.PARTS:
        (origin / part).mkdir(parents=True)
        data = gzip.decompress((PACKAGED_DIR / part / "dev.tsv.gz").read_bytes())
        (origin / part / "dev.tsv").write_bytes(data)
    url = snli_cad.upstream_url("original", "dev")
    assert snli_cad.UPSTREAM_COMMIT in url and url.endswith("/NLI/original/dev.tsv")
    monkeypatch.setattr(snli_cad, "UPSTREAM_URL", origin.as_uri() + "/{part}/{split}.tsv")

    cache = tmp_path / "cache"
    groups = load_snli_groups("dev", data_dir=cache, source="download")
    assert_groups_equal(groups, load_snli_groups("dev"))
    assert (cache / "NLI" / "revised_combined" / "dev.tsv").is_file()

    path = origin / "original" / "dev.tsv"
    path.write_bytes(path.read_bytes().replace(b"neutral", b"entailment", 1))
    with pytest.raises(ValueError, match="hash does not match"):
        load_snli_groups("dev", data_dir=tmp_path / "cache2", source="download")


# === The real files ===

NUM_GROUPS = {"train": 1666, "dev": 200, "test": 400}
# Measured on the pinned files: (group id, edit index).
CHANGED_BOTH = {
    "train": [[57, 1], [57, 2], [619, 2], [619, 3], [808, 3], [1036, 1], [1036, 2]]
    + [[1408, 0], [1408, 1]],
    "dev": [],
    "test": [[97, 0], [97, 2]],
}
IDENTICAL = {"train": 34, "dev": [[89, 1]], "test": [[304, 1]]}
WHITESPACE_ONLY = {"train": [[915, 0], [939, 2], [1107, 0]], "dev": [], "test": []}


@pytest.mark.parametrize("split", SPLITS)
def test_real_files_counts_and_irregular_edits(split):
    groups = load_snli_groups(split)
    n = NUM_GROUPS[split]
    assert len(groups) == n and groups.edit_label.shape == (n, 4)
    assert groups.changed_both.tolist() == CHANGED_BOTH[split]
    identical = groups.identical_edits.tolist()
    if split == "train":
        assert len(identical) == IDENTICAL[split]
        assert identical[:3] == [[82, 2], [83, 3], [99, 3]] and identical[-1] == [1588, 1]
    else:
        assert identical == IDENTICAL[split]
    assert groups.whitespace_only_edits.tolist() == WHITESPACE_ONLY[split]
    # No edit keeps its original's label; each other label appears twice.
    assert len(groups.same_label_edits) == 0
    for k in range(n):
        others = sorted(set(range(3)) - {groups.label[k]})
        assert sorted(groups.edit_label[k].tolist()) == [others[0]] * 2 + [others[1]] * 2
    counts = np.unique(groups.edit_changed, return_counts=True)
    assert dict(zip(*counts))["premise"] > 0.45 * 4 * n


def test_real_files_known_rows():
    dev = load_snli_groups("dev")
    assert dev.premise[0] == "The little boy in jean shorts kicks the soccer ball."
    assert dev.hypothesis[0] == "A little boy is playing soccer outside."
    assert dev.edit_hypothesis[0, 0] == "A little boy is playing cricket."
    # A quoted field, read unquoted.
    assert 'The man works for the campy supply company "Camden".' in dev.hypothesis.tolist()
    pairs = load_snli_groups("test").to_pairs(include_edit_pairs=True)
    assert len(pairs) == 4 * 400 + 4 * 400


def test_docstring_examples():
    results = doctest.testmod(snli_cad, extraglobs={"cfkeras": cfkeras}, verbose=False)
    assert results.attempted >= 6 and results.failed == 0
