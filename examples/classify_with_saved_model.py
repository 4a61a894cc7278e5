"""Classify sentences with a text classifier exported as a SavedModel.

Loads a SavedModel written by `cfkeras.export.export_text_classifier` with
plain `tf.saved_model.load`: the tokenisation is inside the SavedModel, so
this script needs TensorFlow only, not cfkeras. For each sentence it prints
the predicted label and its probability (with the model's `classify`
endpoint, present when it was exported with `class_names`; otherwise the class
index from `serve`).

Run:

    python examples/classify_with_saved_model.py "A moving, beautifully acted film."
    python examples/classify_with_saved_model.py --saved-model path/to/model
"""

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "saved_models" / "imdb_gs_ensemble"
EXAMPLES = [
    "One of the best films I have seen this year: moving, funny and beautifully acted.",
    "A dull, predictable plot and wooden acting. I wanted my two hours back.",
    "Not as good as the first one, but the ending surprised me.",
]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sentences", nargs="*", help="default: a few built-in examples")
    parser.add_argument(
        "--saved-model",
        default=str(DEFAULT_MODEL),
        help="a SavedModel from cfkeras.export.export_text_classifier (default: %(default)s)",
    )
    return parser.parse_args()


def classify(served, sentences):
    """`(probabilities, labels)`: the probability of each sentence's label, and the label."""
    texts = tf.constant(sentences)
    if hasattr(served, "classify"):
        outputs = served.classify(texts)
        probabilities = outputs["probabilities"].numpy()
        labels = [label.decode() for label in outputs["label"].numpy()]
    else:
        probabilities = served.serve(texts).numpy()
        labels = None
    if probabilities.shape[-1] == 1:  # sigmoid: the probability of the positive class
        positive = probabilities[:, 0] > 0.5
        index = positive.astype("int64")
        chosen = np.where(positive, probabilities[:, 0], 1.0 - probabilities[:, 0])
    else:
        index = np.argmax(probabilities, axis=-1)
        chosen = probabilities[np.arange(len(index)), index]
    if labels is None:
        labels = [f"class {i}" for i in index]
    return chosen, labels


def main():
    args = parse_args()
    path = Path(args.saved_model)
    if not (path / "saved_model.pb").is_file():
        sys.exit(
            f"No SavedModel at {path}.\n"
            "saved_models/imdb_gs_ensemble is made by the Table 3 reproduction:\n"
            "    python examples/reproduce_imdb_table3.py --export saved_models/imdb_gs_ensemble\n"
            "Or pass --saved-model PATH to any SavedModel written by\n"
            "    cfkeras.export.export_text_classifier(model, vectorizer, PATH, class_names=[...])"
        )
    served = tf.saved_model.load(os.fspath(path))
    sentences = args.sentences or EXAMPLES
    probabilities, labels = classify(served, sentences)
    for sentence, probability, label in zip(sentences, probabilities, labels):
        print(f"{label:>10}  p={probability:.3f}  {sentence}")


if __name__ == "__main__":
    main()
