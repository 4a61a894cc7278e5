"""Tests for `cfkeras.datasets.imdb_cad_builder`: the TFDS builder of the paired IMDb data."""

import csv
import gzip
import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from cfkeras.datasets import imdb_cad, imdb_cad_builder, load_imdb_pairs
from cfkeras.datasets.imdb_cad_builder import ImdbCounterfactualPairs, load_imdb_tfds

PACKAGED_DIR = Path(imdb_cad.__file__).parent / "data" / "imdb_cad"
PAIRED = ("sentiment", "combined", "paired")
# Counted independently: `wc -l` minus the header, halved.
NUM_PAIRS = {"train": 1707, "validation": 245, "test": 488}
IDENTICAL_TEXT = {"train": [8822], "validation": [], "test": [8893]}
UPSTREAM = {"train": "train", "validation": "dev", "test": "test"}
NO_GCS = tfds.download.DownloadConfig(try_download_gcs=False)


def as_columns(dataset):
    """A TFDS split as a dict of numpy columns, texts decoded."""
    rows = list(tfds.as_numpy(dataset))
    columns = {key: np.array([row[key] for row in rows]) for key in rows[0]}
    for key in ("text", "text_counterfactual"):
        columns[key] = np.array([t.decode("utf-8") for t in columns[key]], dtype=object)
    return columns


def prepare(data_dir, **kwargs):
    builder = ImdbCounterfactualPairs(data_dir=data_dir, **kwargs)
    builder.download_and_prepare(download_config=NO_GCS)
    return builder


@pytest.fixture(autouse=True)
def _no_cad_dir_env(monkeypatch):
    monkeypatch.delenv(imdb_cad.CAD_DIR_ENV, raising=False)


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    """The dataset built once from the packaged copy: split -> columns."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(imdb_cad.CAD_DIR_ENV, raising=False)
        builder = prepare(tmp_path_factory.mktemp("tfds"))
    return {split: as_columns(builder.as_dataset(split=split)) for split in NUM_PAIRS}


def raw_groups(split):
    """batch_id -> [(label, text), ...] in file order, read from the packaged file directly."""
    with gzip.open(PACKAGED_DIR / f"{UPSTREAM[split]}_paired.tsv.gz", "rt", encoding="utf-8") as f:
        rows = list(csv.reader(io.StringIO(f.read()), delimiter="\t"))
    groups = {}
    for label, text, batch_id in rows[1:]:
        groups.setdefault(int(batch_id), []).append((label, text))
    return groups


def write_tiny_upstream(root, tag):
    for split in ("train", "dev", "test"):
        path = root.joinpath(*PAIRED, f"{split}_paired.tsv")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            f"Sentiment\tText\tbatch_id\nNegative\t{tag} {split} bad\t7\nPositive\t{tag} good\t7\n",
            encoding="utf-8",
        )
    return root


# === Contents ===


def test_builder_name_version_features_and_split_sizes(tmp_path_factory, packaged):
    builder = ImdbCounterfactualPairs(data_dir=tmp_path_factory.mktemp("info"))
    assert builder.name == "imdb_counterfactual_pairs"
    assert str(builder.version) == "1.0.0"
    features = builder.info.features
    assert isinstance(features["text"], tfds.features.Text)
    assert isinstance(features["text_counterfactual"], tfds.features.Text)
    for key in ("label", "label_counterfactual"):
        assert features[key].names == ["Negative", "Positive"]
    assert features["group_id"].dtype == np.int64
    for split, n in NUM_PAIRS.items():
        assert len(packaged[split]["group_id"]) == n
        assert len(np.unique(packaged[split]["group_id"])) == n


@pytest.mark.parametrize("split", list(NUM_PAIRS))
def test_first_row_of_every_group_is_the_original(packaged, split):
    columns = packaged[split]
    groups = raw_groups(split)
    assert columns["group_id"].tolist() == list(groups)  # upstream file order
    for i, group_id in enumerate(columns["group_id"]):
        (label, text), (label_cf, text_cf) = groups[group_id]
        assert columns["text"][i] == text
        assert columns["text_counterfactual"][i] == text_cf
        assert columns["label"][i] == imdb_cad.CLASS_NAMES.index(label)
        assert columns["label_counterfactual"][i] == imdb_cad.CLASS_NAMES.index(label_cf)


@pytest.mark.parametrize("split", list(NUM_PAIRS))
def test_matches_load_imdb_pairs(packaged, split):
    columns, pairs = packaged[split], load_imdb_pairs(UPSTREAM[split])
    for key in ("text", "text_counterfactual", "label", "label_counterfactual", "group_id"):
        np.testing.assert_array_equal(columns[key], getattr(pairs, key), err_msg=key)


@pytest.mark.parametrize("split", list(NUM_PAIRS))
def test_labels_flip_within_every_pair(packaged, split):
    columns = packaged[split]
    assert set(columns["label"].tolist()) == {0, 1}
    np.testing.assert_array_equal(columns["label_counterfactual"], 1 - columns["label"])


@pytest.mark.parametrize("split", list(NUM_PAIRS))
def test_identical_text_pairs_are_kept(packaged, split):
    columns = packaged[split]
    same = columns["group_id"][columns["text"] == columns["text_counterfactual"]]
    assert same.tolist() == IDENTICAL_TEXT[split]


def test_known_rows(packaged):
    train, validation, test = packaged["train"], packaged["validation"], packaged["test"]
    assert train["group_id"][:2].tolist() == [4, 40]
    assert train["text"][0].startswith("Long, boring, blasphemous.")
    assert train["text_counterfactual"][0].startswith("Long, fascinating, soulful.")
    assert (train["label"][0], train["label_counterfactual"][0]) == (0, 1)
    assert validation["group_id"][:3].tolist() == [122, 284, 310]
    assert validation["text"][0].startswith("I saw this in the summer of 1990.")
    assert test["group_id"][:2].tolist() == [13, 46]
    assert test["text"][0].startswith("If you haven't seen this, it's terrible.")
    (i,) = np.flatnonzero(test["group_id"] == 8893)
    assert test["text"][i] == test["text_counterfactual"][i]
    assert test["label"][i] != test["label_counterfactual"][i]


# === Sources ===


def test_load_imdb_tfds_builds_and_returns_a_split(tmp_path):
    test = load_imdb_tfds("test", data_dir=tmp_path)
    assert int(test.cardinality()) == 488
    assert (tmp_path / "imdb_counterfactual_pairs" / "1.0.0").is_dir()
    dev = as_columns(load_imdb_tfds("dev", data_dir=tmp_path))  # alias, reuses the build
    assert dev["group_id"][:3].tolist() == [122, 284, 310]
    with pytest.raises(ValueError, match="Unknown split 'dev2'"):
        load_imdb_tfds("dev2", data_dir=tmp_path)


def test_cad_dir_and_env_var_point_at_a_local_directory(tmp_path, monkeypatch):
    arg_dir = write_tiny_upstream(tmp_path / "arg", "arg")
    env_dir = write_tiny_upstream(tmp_path / "env", "env")
    columns = as_columns(load_imdb_tfds("test", data_dir=tmp_path / "a", cad_dir=arg_dir))
    assert columns["text"].tolist() == ["arg test bad"]
    assert columns["group_id"].tolist() == [7]
    monkeypatch.setenv(imdb_cad.CAD_DIR_ENV, str(env_dir))
    columns = as_columns(load_imdb_tfds("validation", data_dir=tmp_path / "b"))
    assert columns["text"].tolist() == ["env dev bad"]
    # The argument wins over the environment variable.
    columns = as_columns(load_imdb_tfds("train", data_dir=tmp_path / "c", cad_dir=arg_dir))
    assert columns["text"].tolist() == ["arg train bad"]


def test_missing_cad_dir_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="sentiment/combined/paired/train_paired.tsv"):
        prepare(tmp_path / "tfds", cad_dir=tmp_path / "nowhere")


def test_builds_from_shared_copy(shared_dir, tmp_path, packaged):
    builder = prepare(tmp_path, cad_dir=shared_dir / "data" / "cad")
    for split in NUM_PAIRS:
        columns = as_columns(builder.as_dataset(split=split))
        for key, values in packaged[split].items():
            np.testing.assert_array_equal(columns[key], values, err_msg=f"{split} {key}")


def test_url_infos_pin_the_upstream_files(shared_dir):
    infos = ImdbCounterfactualPairs.url_infos
    assert len(infos) == 3
    for split in ("train", "dev", "test"):
        url = imdb_cad_builder.upstream_url(split)
        assert url == (
            "https://raw.githubusercontent.com/acmi-lab/counterfactually-augmented-data/"
            f"6f232a1d2a11462a30ce08fb4825b734ab30828e/sentiment/combined/paired/{split}_paired.tsv"
        )
        data = shared_dir.joinpath("data", "cad", *PAIRED, f"{split}_paired.tsv").read_bytes()
        assert infos[url].checksum == hashlib.sha256(data).hexdigest() == imdb_cad.SHA256[split]
        assert int(infos[url].size) == len(data)


def test_download_source_reads_what_the_download_manager_fetched(
    shared_dir, tmp_path, monkeypatch, packaged
):
    # No network: the download manager hands back the local upstream files.
    requested = {}

    def download(self, urls):
        requested.update(urls)
        by_url = {imdb_cad_builder.upstream_url(s): s for s in ("train", "dev", "test")}
        paired = shared_dir.joinpath("data", "cad", *PAIRED)
        return {key: paired / f"{by_url[url]}_paired.tsv" for key, url in urls.items()}

    monkeypatch.setattr(tfds.download.DownloadManager, "download", download)
    builder = prepare(tmp_path, source="download")
    assert requested == {split: imdb_cad_builder.upstream_url(up) for split, up in UPSTREAM.items()}
    columns = as_columns(builder.as_dataset(split="validation"))
    for key, values in packaged["validation"].items():
        np.testing.assert_array_equal(columns[key], values, err_msg=key)


def test_invalid_source_arguments(tmp_path):
    with pytest.raises(ValueError, match="source must be one of"):
        ImdbCounterfactualPairs(data_dir=tmp_path, source="web")
    with pytest.raises(ValueError, match="cad_dir"):
        ImdbCounterfactualPairs(data_dir=tmp_path, source="download", cad_dir=tmp_path)
