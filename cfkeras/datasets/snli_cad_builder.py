"""A `tensorflow_datasets` builder for the counterfactually-augmented SNLI groups.

`SnliCounterfactualGroups` ("snli_counterfactual_groups") writes Kaushik et
al.'s SNLI originals and their four edits (see `cfkeras.datasets.snli_cad`) as
a TFDS dataset that keeps the group structure: one example per original, with
its edits as a sequence of four. Its source is, in order: the builder's
`cad_dir` argument, else the `CFKERAS_CAD_DIR` environment variable, else the
copy packaged with cfkeras (no network); or, with `source="download"`, the
pinned upstream files, checked against their registered SHA-256.
"""

import numpy as np
import tensorflow_datasets as tfds

from cfkeras.datasets import _sources, snli_cad

# Size in bytes of the upstream files at `snli_cad.UPSTREAM_COMMIT`.
SIZES = {
    ("original", "train"): 196249,
    ("original", "dev"): 24322,
    ("original", "test"): 49514,
    ("revised_combined", "train"): 793408,
    ("revised_combined", "dev"): 99314,
    ("revised_combined", "test"): 200056,
}
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
@inproceedings{bowman2015large,
  title={A large annotated corpus for learning natural language inference},
  author={Bowman, Samuel R. and Angeli, Gabor and Potts, Christopher and Manning, Christopher D.},
  booktitle={Proceedings of the 2015 Conference on Empirical Methods in Natural Language
    Processing},
  year={2015}
}
"""


class SnliCounterfactualGroups(tfds.core.GeneratorBasedBuilder):
    """Kaushik et al.'s counterfactually-augmented SNLI, one example a group.

    Features: `premise`, `hypothesis` (text), `label` (`ClassLabel`, names
    `entailment`/`neutral`/`contradiction`), `group_id` (int64, the row of
    the original in upstream `NLI/original/{split}.tsv`), and `edits`, a
    sequence of exactly four edits, each with `premise`, `hypothesis`,
    `label` and `changed` (`ClassLabel`: `premise`, `hypothesis`, `both`,
    `none`: which sentence differs from the original's). Splits: `train`
    (1666 groups), `validation` (200, upstream `dev`) and `test` (400), in
    upstream file order. Irregular edits are kept as upstream has them
    (see `cfkeras.datasets.load_snli_groups` and the packaged README).

    Data: Divyansh Kaushik, Eduard Hovy, Zachary C. Lipton, "Learning the
    Difference that Makes a Difference with Counterfactually-Augmented Data",
    ICLR 2020; github.com/acmi-lab/counterfactually-augmented-data at commit
    `cfkeras.datasets.snli_cad.UPSTREAM_COMMIT`, Apache-2.0; the sentences
    are from SNLI (Bowman et al., EMNLP 2015).

    Args:
        cad_dir: a local directory laid out like the upstream repository root
            (`NLI/original/{split}.tsv`, `NLI/revised_combined/{split}.tsv`);
            default: the `CFKERAS_CAD_DIR` environment variable, else the copy
            packaged with cfkeras.
        source: `"auto"` (the above) or `"download"`: the pinned upstream
            URLs through TFDS's download manager, verified against the
            registered checksums (`url_infos`).
        **kwargs: `tfds.core.DatasetBuilder` arguments (`data_dir`, ...).

    Every source yields the same bytes, so a dataset prepared from one is
    the dataset of all.

    Example:

    >>> builder = cfkeras.datasets.SnliCounterfactualGroups(data_dir="/tmp/tfds")
    >>> builder.download_and_prepare(
    ...     download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    >>> dataset = builder.as_dataset(split="validation")
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Upstream commit 6f232a1d2a11462a30ce08fb4825b734ab30828e."}
    # Checksums of the download URLs, from `snli_cad.SHA256` (one source of
    # truth) instead of a `checksums.tsv` beside this module.
    url_infos = {
        snli_cad.upstream_url(part, split): tfds.download.checksums.UrlInfo(
            size=SIZES[(part, split)],
            checksum=snli_cad.SHA256[(part, split)],
            filename=f"{part}_{split}.tsv",
        )
        for part in snli_cad.PARTS
        for split in snli_cad.SPLITS
    }

    def __init__(self, *, cad_dir=None, source="auto", **kwargs):
        self.cad_dir, self.source = _sources.builder_source(cad_dir, source)
        super().__init__(**kwargs)

    def _info(self):
        label = tfds.features.ClassLabel(names=list(snli_cad.CLASS_NAMES))
        edit = {
            "premise": tfds.features.Text(),
            "hypothesis": tfds.features.Text(),
            "label": label,
            "changed": tfds.features.ClassLabel(names=list(snli_cad.CHANGED)),
        }
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "SNLI premise/hypothesis pairs and their counterfactual edits (Kaushik et "
                "al., ICLR 2020): crowdworkers rewrote the premise or the hypothesis "
                "minimally so that the label becomes each of the two other classes. One "
                "example per original, with its four edits."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "premise": tfds.features.Text(),
                    "hypothesis": tfds.features.Text(),
                    "label": label,
                    "group_id": np.int64,
                    "edits": tfds.features.Sequence(edit, length=snli_cad.EDITS_PER_GROUP),
                }
            ),
            # Keep the upstream file order.
            disable_shuffling=True,
            homepage="https://github.com/acmi-lab/counterfactually-augmented-data",
            citation=_CITATION,
            license="Apache-2.0 (the counterfactual edits); CC BY-SA 4.0 (SNLI)",
        )

    def _split_generators(self, dl_manager):
        if self.source == "download":
            urls = {
                (name, part): snli_cad.upstream_url(part, up)
                for name, up in SPLITS.items()
                for part in snli_cad.PARTS
            }
            paths = dl_manager.download(
                {f"{name}/{part}": url for (name, part), url in urls.items()}
            )
            return {
                name: self._generate_examples(
                    paths={part: paths[f"{name}/{part}"] for part in snli_cad.PARTS}
                )
                for name in SPLITS
            }
        return {name: self._generate_examples(split=up) for name, up in SPLITS.items()}

    def _generate_examples(self, split=None, paths=None):
        if paths is not None:
            groups = snli_cad._read_paths(paths)
        else:
            groups = snli_cad.load_snli_groups(split, data_dir=self.cad_dir)
        for k in range(len(groups)):
            yield (
                k,
                {
                    "premise": groups.premise[k],
                    "hypothesis": groups.hypothesis[k],
                    "label": int(groups.label[k]),
                    "group_id": k,
                    "edits": {
                        "premise": groups.edit_premise[k].tolist(),
                        "hypothesis": groups.edit_hypothesis[k].tolist(),
                        "label": groups.edit_label[k].tolist(),
                        "changed": groups.edit_changed[k].tolist(),
                    },
                },
            )


def load_snli_tfds(split="train", data_dir=None, cad_dir=None, source="auto"):
    """Prepares `SnliCounterfactualGroups` if needed and returns one split.

    Args:
        split: `"train"`, `"validation"` (alias `"dev"`) or `"test"`.
        data_dir: the TFDS data directory to prepare into and read from
            (default: TFDS's, `$TFDS_DATA_DIR` or `~/tensorflow_datasets`).
        cad_dir: a local upstream-layout directory to read (see
            `SnliCounterfactualGroups`); default `$CFKERAS_CAD_DIR`, else the
            packaged copy.
        source: `"auto"` or `"download"` (the pinned upstream URLs).

    Returns:
        A `tf.data.Dataset` of dicts with `premise`, `hypothesis`, `label`,
        `group_id` and `edits` (a dict of four-element tensors `premise`,
        `hypothesis`, `label`, `changed`), one element a group, in upstream
        order. Nothing is fetched from the network unless `source="download"`
        (TFDS's look-up of prepared copies on GCS is off).

    Example:

    >>> test = cfkeras.datasets.load_snli_tfds("test", data_dir="/tmp/tfds")
    >>> int(test.cardinality())
    400
    """
    split = {"dev": "validation"}.get(split, split)
    if split not in SPLITS:
        raise ValueError(
            f"Unknown split {split!r}; valid splits are {', '.join(map(repr, SPLITS))} "
            "(or 'dev', an alias of 'validation')."
        )
    builder = SnliCounterfactualGroups(data_dir=data_dir, cad_dir=cad_dir, source=source)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False)
    )
    return builder.as_dataset(split=split)
