"""Gradient supervision on counterfactually-augmented IMDb pairs.

Trains the bag-of-embeddings sentiment model of Teney et al. (2020,
supplement C) twice on the same data, with the same main-loss batch (32
reviews) and the same seed:

* the augmentation baseline: originals and counterfactuals as independent
  examples;
* + gradient supervision (GS) in the averaged-embedding space, 16 pairs (32
  reviews) a batch.

and prints validation accuracy (best epoch) and test accuracy on original and
edited reviews for both. Uses the IMDb pairs packaged with cfkeras (Kaushik et
al. 2020), so it needs no download. This is a short demonstration run; the
faithful reproduction of the paper's Table 3 is a separate command.

Run:

    python examples/imdb_gradient_supervision.py --epochs 15
"""

import argparse
import json
import os
import time

import keras
import numpy as np
import tensorflow as tf

import cfkeras
from cfkeras.datasets import load_imdb_pairs
from cfkeras.models.text_classifier import GS_LAYER


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--sequence-length", type=int, default=400)
    parser.add_argument("--vocabulary-size", type=int, default=20000)
    parser.add_argument("--gs-weight", type=float, default=20.0, help="λ (the paper: 20)")
    parser.add_argument(
        "--learning-rate", type=float, default=8.0, help="Adadelta rate (tuned on validation)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None, help="upstream CAD root; default: packaged")
    parser.add_argument("--log-dir", default=None, help="write TensorBoard logs here")
    return parser.parse_args()


def optimizer(learning_rate):
    # AdaDelta as in its paper and PyTorch (Keras's defaults differ).
    return keras.optimizers.Adadelta(learning_rate=learning_rate, rho=0.9, epsilon=1e-6)


def callbacks(log_dir, name, epochs):
    # Keep the weights of the epoch of best validation accuracy.
    best = keras.callbacks.EarlyStopping(
        monitor="val_accuracy", mode="max", patience=epochs, restore_best_weights=True
    )
    if not log_dir:
        return [best]
    return [best, keras.callbacks.TensorBoard(os.path.join(log_dir, name))]


def run(args):
    keras.utils.set_random_seed(args.seed)
    splits = [load_imdb_pairs(name, data_dir=args.data_dir) for name in ("train", "dev", "test")]
    vectorize = keras.layers.TextVectorization(
        max_tokens=args.vocabulary_size, output_sequence_length=args.sequence_length
    )
    train = splits[0]
    vectorize.adapt(np.concatenate([train.text, train.text_counterfactual]))
    train, dev, test = (data.to_pairs(vectorize, label_dtype="float32") for data in splits)
    vocabulary = vectorize.vocabulary_size()

    # Both rows train through the same cfkeras step (XLA, dense embedding
    # gradients) with 32 reviews in the main loss a batch; unpaired examples
    # get the main loss only.
    rows = {
        "augmentation": (
            0.0,
            train.flatten(batch_size=32, seed=args.seed),
            dev.flatten(batch_size=32, shuffle=False),
        ),
        "gradient_supervision": (
            args.gs_weight,
            train.to_dataset(batch_size=16, seed=args.seed),
            dev.to_dataset(batch_size=16, shuffle=False),
        ),
    }
    results = {}
    for name, (gs_weight, train_data, dev_data) in rows.items():
        keras.utils.set_random_seed(args.seed)
        model = cfkeras.models.bag_of_embeddings_classifier(vocabulary)
        trainer = cfkeras.GradientSupervisionModel(model, gs_layer=GS_LAYER, gs_weight=gs_weight)
        trainer.compile(
            optimizer=optimizer(args.learning_rate),
            loss="binary_crossentropy",
            metrics=["accuracy"],
        )
        start = time.perf_counter()
        history = trainer.fit(
            train_data,
            validation_data=dev_data,
            epochs=args.epochs,
            verbose=2,
            callbacks=callbacks(args.log_dir, name, args.epochs),
        )
        results[name] = summarize(history, model, test, time.perf_counter() - start)
    return results


def summarize(history, model, test, seconds):
    """Best validation accuracy, and test accuracy at that epoch's weights."""
    val = history.history["val_accuracy"]
    original = model.predict(test.original, verbose=0)[:, 0] > 0.5
    edited = model.predict(test.counterfactual, verbose=0)[:, 0] > 0.5
    return {
        "val_accuracy_best": float(max(val)),
        "best_epoch": int(np.argmax(val)) + 1,
        "val_accuracy_last": float(val[-1]),
        "test_original_accuracy": float(np.mean(original == (test.label > 0.5))),
        "test_edited_accuracy": float(np.mean(edited == (test.counterfactual_label > 0.5))),
        "train_seconds": round(seconds, 1),
    }


def main():
    args = parse_args()
    results = run(args)
    print(json.dumps({"args": vars(args), "results": results}, indent=2))
    print("\n| model | val (best epoch) | test original | test edited |")
    print("|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {100 * r['val_accuracy_best']:.1f} (epoch {r['best_epoch']}) | "
            f"{100 * r['test_original_accuracy']:.1f} | {100 * r['test_edited_accuracy']:.1f} |"
        )


if __name__ == "__main__":
    tf.get_logger().setLevel("ERROR")
    main()
