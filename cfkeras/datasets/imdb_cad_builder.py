"""A `tensorflow_datasets` builder for the counterfactually-augmented IMDb pairs.

`ImdbCounterfactualPairs` ("imdb_counterfactual_pairs") writes Kaushik et al.'s
paired IMDb reviews (see `cfkeras.datasets.imdb_cad`) as a TFDS dataset that
keeps the pair structure: one example per pair, original first. Its source is,
in order: the builder's `cad_dir` argument, else the `CFKERAS_CAD_DIR`
environment variable, else the copy packaged with cfkeras (no network); or,
with `source="download"`, the pinned upstream files, checked against their
registered SHA-256.
"""

import os

import numpy as np
import tensorflow_datasets as tfds

from cfkeras.datasets import _sources, imdb_cad

# Size in bytes of the upstream files at `imdb_cad.UPSTREAM_COMMIT`.
SIZES = {"train": 3179425, "dev": 466175, "test": 907811}
# TFDS split name -> upstream split name.
SPLITS = {"train": "train", "validation": "dev", "test": "test"}
SOURCES = _sources.SOURCES

_CITATION = """\
@inproceedings{kaushik2020learning,
  title={Learning the Difference that Makes a Difference with Counterfactually-Augmented Data},
  author={Kaushik, Divyansh and Hovy, Eduard and Lipton, Zachary C.},
  booktitle={International Conference on Learning Representations},
  year={2020}
}
"""


def upstream_url(split):
    """The pinned upstream URL of one split (`"train"`, `"dev"` or `"test"`)."""
    return imdb_cad.UPSTREAM_URL.format(commit=imdb_cad.UPSTREAM_COMMIT, split=split)


class ImdbCounterfactualPairs(tfds.core.GeneratorBasedBuilder):
    """Kaushik et al.'s counterfactually-augmented IMDb reviews, one example a pair.

    Features: `text` (the original review), `text_counterfactual` (its
    human-edited counterfactual), `label` and `label_counterfactual`
    (`ClassLabel`, names `Negative`/`Positive`, so 1 = Positive), and
    `group_id` (int64, the upstream `batch_id`). Splits: `train` (1707 pairs),
    `validation` (245, upstream `dev`) and `test` (488), in upstream file
    order. Quirks are kept as upstream has them (two pairs with identical
    texts, train 8822 and test 8893; see the packaged README).

    Data: Divyansh Kaushik, Eduard Hovy, Zachary C. Lipton, "Learning the
    Difference that Makes a Difference with Counterfactually-Augmented Data",
    ICLR 2020; github.com/acmi-lab/counterfactually-augmented-data at commit
    `cfkeras.datasets.imdb_cad.UPSTREAM_COMMIT`, Apache-2.0.

    Args:
        cad_dir: a local directory laid out like the upstream repository root
            (`sentiment/combined/paired/{split}_paired.tsv`); default: the
            `CFKERAS_CAD_DIR` environment variable, else the copy packaged
            with cfkeras.
        source: `"auto"` (the above) or `"download"`: the pinned upstream
            URLs through TFDS's download manager, verified against the
            registered checksums (`url_infos`).
        **kwargs: `tfds.core.DatasetBuilder` arguments (`data_dir`, ...).

    Every source yields the same bytes, so a dataset prepared from one is
    the dataset of all.

    Example:

    >>> builder = cfkeras.datasets.ImdbCounterfactualPairs(data_dir="/tmp/tfds")
    >>> builder.download_and_prepare(
    ...     download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    >>> dataset = builder.as_dataset(split="validation")
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Upstream commit 6f232a1d2a11462a30ce08fb4825b734ab30828e."}
    # Checksums of the download URLs, from `imdb_cad.SHA256` (one source of
    # truth) instead of a `checksums.tsv` beside this module.
    url_infos = {
        upstream_url(split): tfds.download.checksums.UrlInfo(
            size=SIZES[split], checksum=imdb_cad.SHA256[split], filename=f"{split}_paired.tsv"
        )
        for split in imdb_cad.SPLITS
    }

    def __init__(self, *, cad_dir=None, source="auto", **kwargs):
        self.cad_dir, self.source = _sources.builder_source(cad_dir, source)
        super().__init__(**kwargs)

    def _info(self):
        label = tfds.features.ClassLabel(names=list(imdb_cad.CLASS_NAMES))
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "IMDb reviews and their counterfactual edits (Kaushik et al., ICLR 2020): "
                "each review minimally rewritten by a human so that its sentiment flips. "
                "One example per pair, the original first."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "text": tfds.features.Text(),
                    "text_counterfactual": tfds.features.Text(),
                    "label": label,
                    "label_counterfactual": label,
                    "group_id": np.int64,
                }
            ),
            # Keep the upstream file order.
            disable_shuffling=True,
            homepage="https://github.com/acmi-lab/counterfactually-augmented-data",
            citation=_CITATION,
            license="Apache-2.0",
        )

    def _split_generators(self, dl_manager):
        if self.source == "download":
            paths = dl_manager.download({name: upstream_url(up) for name, up in SPLITS.items()})
            return {name: self._generate_examples(path=paths[name]) for name in SPLITS}
        return {name: self._generate_examples(split=up) for name, up in SPLITS.items()}

    def _generate_examples(self, split=None, path=None):
        if path is not None:
            with open(path, encoding="utf-8", newline="") as f:
                pairs = imdb_cad._parse_paired_tsv(f, os.fspath(path))
        else:
            pairs = imdb_cad.load_imdb_pairs(split, data_dir=self.cad_dir)
        for i in range(len(pairs)):
            group_id = int(pairs.group_id[i])
            yield (
                group_id,
                {
                    "text": pairs.text[i],
                    "text_counterfactual": pairs.text_counterfactual[i],
                    "label": int(pairs.label[i]),
                    "label_counterfactual": int(pairs.label_counterfactual[i]),
                    "group_id": group_id,
                },
            )


def load_imdb_tfds(split="train", data_dir=None, cad_dir=None, source="auto"):
    """Prepares `ImdbCounterfactualPairs` if needed and returns one split.

    Args:
        split: `"train"`, `"validation"` (alias `"dev"`) or `"test"`.
        data_dir: the TFDS data directory to prepare into and read from
            (default: TFDS's, `$TFDS_DATA_DIR` or `~/tensorflow_datasets`).
        cad_dir: a local upstream-layout directory to read (see
            `ImdbCounterfactualPairs`); default `$CFKERAS_CAD_DIR`, else the
            packaged copy.
        source: `"auto"` or `"download"` (the pinned upstream URLs).

    Returns:
        A `tf.data.Dataset` of dicts with `text`, `text_counterfactual`,
        `label`, `label_counterfactual` and `group_id`, one element a pair,
        in upstream order. Nothing is fetched from the network unless
        `source="download"` (TFDS's look-up of prepared copies on GCS is off).

    Example:

    >>> test = cfkeras.datasets.load_imdb_tfds("test", data_dir="/tmp/tfds")
    >>> int(test.cardinality())
    488
    """
    split = {"dev": "validation"}.get(split, split)
    if split not in SPLITS:
        raise ValueError(
            f"Unknown split {split!r}; valid splits are {', '.join(map(repr, SPLITS))} "
            "(or 'dev', an alias of 'validation')."
        )
    builder = ImdbCounterfactualPairs(data_dir=data_dir, cad_dir=cad_dir, source=source)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False)
    )
    return builder.as_dataset(split=split)
