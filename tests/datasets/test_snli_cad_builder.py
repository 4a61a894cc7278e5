"""Tests for `cfkeras.datasets.snli_cad_builder`: the TFDS builder, prepared
offline from ../shared and from the packaged copy."""

from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from cfkeras.datasets import snli_cad
from cfkeras.datasets.snli_cad_builder import (
    SIZES,
    SnliCounterfactualGroups,
    load_snli_tfds,
)

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
NUM_GROUPS = {"train": 1666, "validation": 200, "test": 400}
OFFLINE = tfds.download.DownloadConfig(try_download_gcs=False)


@pytest.fixture(autouse=True)
def _no_cad_dir_env(monkeypatch):
    monkeypatch.delenv(snli_cad.CAD_DIR_ENV, raising=False)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The builder prepared from ../shared (skipped when it is absent)."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} not found: these tests need ../shared beside the repository")
    builder = SnliCounterfactualGroups(
        data_dir=tmp_path_factory.mktemp("tfds"), cad_dir=SHARED / "data" / "cad"
    )
    builder.download_and_prepare(download_config=OFFLINE)
    return builder


def test_name_features_and_counts(prepared):
    assert prepared.name == "snli_counterfactual_groups"
    info = prepared.info
    assert {name: info.splits[name].num_examples for name in NUM_GROUPS} == NUM_GROUPS
    assert info.features["label"].names == list(snli_cad.CLASS_NAMES)
    edits = info.features["edits"]
    assert edits.feature["changed"].names == ["premise", "hypothesis", "both", "none"]
    assert edits.shape["label"] == (4,)


def test_rows_match_the_loader(prepared):
    groups = snli_cad.load_snli_groups("dev")
    rows = list(tfds.as_numpy(prepared.as_dataset(split="validation")))
    assert len(rows) == 200
    for k in (0, 89, 199):
        row = rows[k]
        assert row["group_id"] == k
        assert row["premise"].decode() == groups.premise[k]
        assert row["hypothesis"].decode() == groups.hypothesis[k]
        assert row["label"] == groups.label[k]
        edits = row["edits"]
        assert [p.decode() for p in edits["premise"]] == groups.edit_premise[k].tolist()
        assert [h.decode() for h in edits["hypothesis"]] == groups.edit_hypothesis[k].tolist()
        np.testing.assert_array_equal(edits["label"], groups.edit_label[k])
        names = [snli_cad.CHANGED[c] for c in edits["changed"]]
        assert names == groups.edit_changed[k].tolist()
    # Known rows: the first dev group, and its one identical edit (89, 1).
    assert rows[0]["premise"] == b"The little boy in jean shorts kicks the soccer ball."
    assert rows[0]["edits"]["hypothesis"][0] == b"A little boy is playing cricket."
    assert rows[89]["edits"]["changed"][1] == snli_cad.CHANGED.index("none")


def test_irregular_edits_survive(prepared):
    changed = np.stack(
        [r["edits"]["changed"] for r in tfds.as_numpy(prepared.as_dataset(split="test"))]
    )
    both = np.argwhere(changed == snli_cad.CHANGED.index("both")).tolist()
    none = np.argwhere(changed == snli_cad.CHANGED.index("none")).tolist()
    assert both == [[97, 0], [97, 2]] and none == [[304, 1]]


def test_packaged_copy_prepares_the_same_split(prepared, tmp_path):
    dataset = load_snli_tfds("dev", data_dir=tmp_path)
    ours = [r["premise"] for r in tfds.as_numpy(dataset)]
    theirs = [r["premise"] for r in tfds.as_numpy(prepared.as_dataset(split="validation"))]
    assert ours == theirs and int(dataset.cardinality()) == 200


def test_registered_url_infos_match_pinned_files(shared_dir):
    infos = SnliCounterfactualGroups.url_infos
    assert len(infos) == 6
    for (part, split), digest in snli_cad.SHA256.items():
        info = infos[snli_cad.upstream_url(part, split)]
        assert info.checksum == digest
        path = shared_dir / "data" / "cad" / "NLI" / part / f"{split}.tsv"
        assert info.size == SIZES[(part, split)] == path.stat().st_size


def test_download_source_reads_the_pinned_urls(shared_dir, tmp_path):
    # TFDS's download manager replaced by a stub that serves ../shared: the
    # builder asks for exactly the pinned URLs and reads what they give.
    requested = {}

    class StubDownloadManager:
        def download(self, urls):
            requested.update(urls)
            local = {}
            for key, url in urls.items():
                part, split = url.split("/NLI/")[1].removesuffix(".tsv").split("/")
                local[key] = shared_dir / "data" / "cad" / "NLI" / part / f"{split}.tsv"
            return local

    builder = SnliCounterfactualGroups(source="download", data_dir=tmp_path)
    generators = builder._split_generators(StubDownloadManager())
    assert sorted(requested.values()) == sorted(SnliCounterfactualGroups.url_infos)
    assert all(snli_cad.UPSTREAM_COMMIT in url for url in requested.values())
    key, example = next(iter(generators["validation"]))
    assert key == 0 and example["premise"] == snli_cad.load_snli_groups("dev").premise[0]
    assert sum(1 for _ in generators["test"]) == 400


def test_bad_arguments():
    with pytest.raises(ValueError, match="source must be one of"):
        SnliCounterfactualGroups(source="hub")
    with pytest.raises(ValueError, match="cad_dir"):
        SnliCounterfactualGroups(source="download", cad_dir="/tmp")
    with pytest.raises(ValueError, match="Unknown split"):
        load_snli_tfds("val")
