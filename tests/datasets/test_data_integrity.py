"""Corrupted and truncated data files fail loudly, naming the file and the line.

Downloads are checked against pinned SHA-256 sums (`keras.utils.get_file`);
local and packaged copies are parsed strictly (`cfkeras.datasets._tsv`).
"""

import gzip
import io
from pathlib import Path

import pytest

from cfkeras.datasets import imdb_cad, load_imdb_pairs
from cfkeras.datasets._tsv import read_records

PACKAGED = Path(imdb_cad.__file__).parent / "data" / "imdb_cad" / "dev_paired.tsv.gz"
PAIRED = ("sentiment", "combined", "paired")
HEADER = ["Sentiment", "Text", "batch_id"]


@pytest.fixture(scope="module")
def upstream():
    """The bytes of the pinned upstream dev split (the packaged copy, decompressed)."""
    return gzip.decompress(PACKAGED.read_bytes())


def serve(tmp_path, monkeypatch, content):
    """A file:// origin holding `content` as the dev split (no network)."""
    origin = tmp_path / "origin"
    origin.mkdir(exist_ok=True)
    (origin / "dev_paired.tsv").write_bytes(content)
    monkeypatch.setattr(imdb_cad, "UPSTREAM_URL", origin.as_uri() + "/{split}_paired.tsv")


def test_a_corrupted_cached_download_is_replaced_not_read(upstream, tmp_path, monkeypatch):
    serve(tmp_path, monkeypatch, upstream)
    cached = tmp_path.joinpath("cache", *PAIRED, "dev_paired.tsv")
    cached.parent.mkdir(parents=True)
    corrupted = upstream.replace(b"Positive", b"Negative", 1)
    cached.write_bytes(corrupted)
    pairs = load_imdb_pairs("dev", data_dir=tmp_path / "cache", source="download")
    assert cached.read_bytes() == upstream  # the hash check fetched it again
    assert len(pairs) == len(load_imdb_pairs("dev"))


def test_a_corrupted_download_is_a_clear_error(upstream, tmp_path, monkeypatch):
    # One flipped byte in the middle of the file: same size, another hash.
    middle = len(upstream) // 2
    corrupted = upstream[:middle] + bytes([upstream[middle] ^ 1]) + upstream[middle + 1 :]
    serve(tmp_path, monkeypatch, corrupted)
    with pytest.raises(ValueError, match="hash does not match"):
        load_imdb_pairs("dev", data_dir=tmp_path / "cache", source="download")


def test_a_truncated_local_copy_names_its_last_line(upstream, tmp_path):
    text = upstream.decode("utf-8")
    lines = text.split("\n")
    # Cut inside the text of the 11th record (line 12): its batch_id is lost.
    cut = sum(len(line) + 1 for line in lines[:11]) + len(lines[11]) // 2
    path = tmp_path.joinpath(*PAIRED, "dev_paired.tsv")
    path.parent.mkdir(parents=True)
    path.write_text(text[:cut], encoding="utf-8", newline="")
    with pytest.raises(ValueError, match=r"line 12: expected 3 tab-separated columns") as info:
        load_imdb_pairs("dev", data_dir=tmp_path)
    assert str(info.value).startswith(f"{path}: ")


@pytest.mark.parametrize("damage", ["truncated", "flipped"])
def test_a_damaged_gzip_copy_is_a_clear_error(damage):
    data = PACKAGED.read_bytes()
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:  # a flipped byte inside the compressed stream
        middle = len(data) // 2
        data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]
    with (
        gzip.open(io.BytesIO(data), "rt", encoding="utf-8", newline="") as stream,
        pytest.raises(ValueError, match=r"^dev_paired.tsv.gz: ") as info,
    ):
        for _ in read_records(stream, "dev_paired.tsv.gz", HEADER, noun="pairs"):
            pass
    assert any(
        phrase in str(info.value)
        for phrase in ("corrupted or truncated file", "malformed TSV", "not valid UTF-8")
    ), str(info.value)
