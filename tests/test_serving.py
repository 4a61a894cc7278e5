"""`cfkeras.serving`: SavedModels served over HTTP from a separate process.

Two exports, each served by `python cfkeras/serving.py DIR --port 0` (run as a
script: the server process imports TensorFlow, not cfkeras): a GS-trained
model on float features (`model.export`) and a text classifier on raw strings
(`cfkeras.export.export_text_classifier`). Concurrent clients must get what
in-process `predict` gives; malformed requests an HTTP 400 with an error,
after which the server still answers. The load test (1 000 requests, 8
concurrent clients, latency percentiles) is behind the `serving` marker:

    python -m pytest tests/test_serving.py -m serving -q -s
"""

import concurrent.futures
import json
import os
import queue
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import cfkeras
from cfkeras.export import export_text_classifier

SERVER = Path(cfkeras.__file__).resolve().parent / "serving.py"
FEATURES = 4
SENTENCES = ["a wonderful warm film", "a dull and boring film", "great acting", "terrible plot"]


def start_server(model_dir):
    """`(process, base URL)` of a server on a free port, from a fresh interpreter."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    env.pop("PYTHONPATH", None)  # the server needs TensorFlow only
    process = subprocess.Popen(
        [sys.executable, str(SERVER), str(model_dir), "--port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    lines = queue.Queue()
    threading.Thread(target=lambda: lines.put(process.stdout.readline()), daemon=True).start()
    try:
        line = lines.get(timeout=120)
    except queue.Empty:
        process.kill()
        raise
    assert line.startswith("serving model on http://"), line
    return process, line.split(" on ")[1].strip() + "/v1/models/model"


def post(url, body, timeout=30):
    """`(status, decoded JSON)` of a POST with `body` (bytes, or JSON-encoded)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode("utf-8")
    request = urllib.request.Request(
        url + ":predict", data=data, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """The two models, exported and served; stopped at the end of the module."""
    keras.utils.set_random_seed(0)
    root = tmp_path_factory.mktemp("serving")
    inputs = keras.Input((FEATURES,), name="features")
    hidden = keras.layers.Dense(8, activation="tanh", name="hidden")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(hidden))
    gs = cfkeras.GradientSupervisionModel(model, gs_layer="hidden")
    gs.compile(optimizer="adam", loss="sparse_categorical_crossentropy", jit_compile=False)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, FEATURES)).astype("float32")
    y = np.arange(16) % 3
    gs.fit(cfkeras.Pairs(x, -x, y, (y + 1) % 3).to_dataset(8, seed=0), epochs=2, verbose=0)
    gs.export(root / "features", verbose=False)

    vectorize = keras.layers.TextVectorization(32, output_sequence_length=6)
    vectorize.adapt(SENTENCES)
    text = cfkeras.models.bag_of_embeddings_classifier(vectorize.vocabulary_size(), embedding_dim=4)
    export_text_classifier(text, vectorize, root / "text")

    started = [start_server(root / name) for name in ("features", "text")]
    yield {
        "features": (
            started[0][1],
            lambda batch: gs.predict(np.asarray(batch, "float32"), verbose=0),
        ),
        "text": (
            started[1][1],
            lambda batch: text.predict(vectorize(tf.constant(batch)), verbose=0),
        ),
        "processes": [process for process, _ in started],
    }
    for process, _ in started:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def feature_batch(k):
    rng = np.random.default_rng(k)
    return rng.normal(size=(1 + k % 5, FEATURES)).round(4).tolist()


def text_batch(k):
    return [SENTENCES[(k + i) % 4] + " unseen" * (i % 2) for i in range(1 + k % 3)]


def serve_concurrently(servers, requests, clients):
    """`requests` requests from `clients` threads.

    Returns (max |served - predict|, latencies, seconds for the requests);
    `predict` runs once per model afterwards, on all its batches at once.
    """
    jobs = []
    for k in range(requests):
        name = ("features", "text")[k % 2]
        jobs.append((name, (feature_batch if name == "features" else text_batch)(k)))

    def send(job):
        name, batch = job
        start = time.perf_counter()
        status, body = post(servers[name][0], {"inputs": batch})
        assert status == 200, body
        return np.asarray(body["outputs"]), time.perf_counter() - start

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        answers = list(pool.map(send, jobs))
    seconds = time.perf_counter() - start
    worst = 0.0
    for name in ("features", "text"):
        mine = [k for k, (job_name, _) in enumerate(jobs) if job_name == name]
        expected = servers[name][1]([row for k in mine for row in jobs[k][1]])
        served = np.concatenate([answers[k][0] for k in mine])
        assert served.shape == expected.shape
        worst = max(worst, float(np.max(np.abs(served - expected))))
    return worst, np.array([latency for _, latency in answers]), seconds


def test_concurrent_clients_get_what_predict_gives(servers):
    worst, _, _ = serve_concurrently(servers, requests=24, clients=4)
    assert worst < 1e-5


def test_instances_and_metadata(servers):
    url, predict = servers["features"]
    batch = feature_batch(3)
    status, body = post(url, {"instances": batch})
    assert status == 200
    np.testing.assert_allclose(body["predictions"], predict(batch), atol=1e-5)
    with urllib.request.urlopen(url + "/metadata", timeout=30) as response:
        metadata = json.loads(response.read())["metadata"]
    assert metadata["inputs"] == {"features": {"dtype": "float32", "shape": [None, FEATURES]}}


MALFORMED = {
    "features": [
        ({"inputs": [["a", "b", "c", "d"]]}, "must hold numbers"),  # wrong dtype
        ({"inputs": [[True, False, True, False]]}, "must hold numbers"),
        ({"inputs": [0.1, 0.2, 0.3, 0.4]}, "rank 2"),  # wrong rank
        ({"inputs": [[[0.1, 0.2, 0.3, 0.4]]]}, "rank 2"),
        ({"inputs": [[0.1, 0.2, 0.3]]}, "axis 1 must have size 4"),
        ({"inputs": []}, "rank 2"),  # empty batch: shape (0,)
        ({"instances": []}, "empty"),
        ({"inputs": [[0.1, 0.2], [0.3]]}, "rank"),  # ragged
        ({"inputs": [[float("nan")] * 4]}, "NaN"),
        ({"inputs": {"other": [[0.0] * 4]}}, "unknown"),
        ({"input": [[0.0] * 4]}, "exactly one of"),
        ([1, 2], "JSON object"),
        (b'{"inputs": [[1, 2, 3, \xff]]}', "not UTF-8"),  # a non-UTF-8 body
        (b'{"inputs": [[1, 2', "not JSON"),
    ],
    "text": [
        ({"inputs": [1, 2]}, "must hold strings"),  # wrong dtype
        ({"inputs": [["a film"]]}, "rank 1"),  # wrong rank
        ({"inputs": []}, "empty"),  # empty batch
        ({"inputs": ["a film \ud800"]}, "not UTF-8"),  # a lone surrogate: no UTF-8 form
        ('{"inputs": ["caf\xe9"]}'.encode("latin-1"), "not UTF-8"),  # a non-UTF-8 string
    ],
}


@pytest.mark.parametrize("name", ["features", "text"])
def test_malformed_requests_get_an_error_and_the_server_keeps_serving(servers, name):
    url, predict = servers[name]
    for body, message in MALFORMED[name]:
        status, answer = post(url, body)
        assert status == 400, (body, answer)
        assert message in answer["error"], (body, answer)
    good = feature_batch(1) if name == "features" else text_batch(1)
    status, answer = post(url, {"inputs": good})
    assert status == 200
    np.testing.assert_allclose(answer["outputs"], predict(good), atol=1e-5)
    assert all(process.poll() is None for process in servers["processes"])


@pytest.mark.serving
def test_load_1000_requests_from_8_concurrent_clients(servers):
    worst, latencies, elapsed = serve_concurrently(servers, requests=1000, clients=8)
    p50, p90, p99 = (float(np.percentile(latencies, q)) * 1000 for q in (50, 90, 99))
    print(
        f"\n1000 requests (8 clients, 2 servers): {elapsed:.1f} s, {1000 / elapsed:.0f} req/s; "
        f"latency p50 {p50:.1f} ms, p90 {p90:.1f} ms, p99 {p99:.1f} ms, "
        f"max {latencies.max() * 1000:.1f} ms; max |served - predict| {worst:.2g}"
    )
    slowest = np.argsort(latencies)[-5:][::-1]
    milliseconds = (latencies[slowest] * 1000).round().tolist()
    print(f"slowest requests (index: ms): {dict(zip(slowest.tolist(), milliseconds))}")
    assert worst < 1e-5
    assert all(process.poll() is None for process in servers["processes"])
