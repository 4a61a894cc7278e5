"""A small HTTP server for a SavedModel, in TensorFlow Serving's REST format.

TensorFlow Serving's model server is neither on PyPI nor in Debian's
archive, so cfkeras ships this stand-in for tests, demos and small
deployments: it loads a SavedModel with `tf.saved_model.load` (no cfkeras or
Keras needed to serve: the file imports only TensorFlow, NumPy and the
standard library, and runs as a script) and answers, like TF Serving's REST
API,

```
POST /v1/models/<name>:predict   {"inputs": ...}     -> {"outputs": ...}
                                 {"instances": [...]} -> {"predictions": [...]}
GET  /v1/models/<name>           -> {"model_version_status": [...]}
GET  /v1/models/<name>/metadata  -> the signature's inputs and outputs
```

`inputs` is the batch of the signature's single input (nested lists), or a
dict of them by input name; `instances` is a list of examples (of dicts by
input name for several inputs). Requests are checked against the signature
before the model runs: a body that is not UTF-8 JSON, an unknown or missing
input, values of the wrong dtype (strings for numbers, fractions for
integers, ...), the wrong rank or size, an empty batch or inputs of unequal
batch sizes are answered with HTTP 400 and `{"error": ...}`; a failure
inside the model with 500; the server keeps serving. Requests are served
concurrently, one thread each (`ThreadingHTTPServer`).

Run it as

```
python -m cfkeras.serving MODEL_DIR [--port 8501] [--host 127.0.0.1] [--name model]
python path/to/cfkeras/serving.py MODEL_DIR ...     # without importing cfkeras
```

It warms the model up (one call on an example of zeros), then prints
`serving <name> on http://<host>:<port>` once it listens (with `--port 0`,
on a free port chosen by the system).
"""

import argparse
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import tensorflow as tf

MAX_BODY_BYTES = 64 * 1024 * 1024


class RequestError(ValueError):
    """A request that does not fit the signature (answered with HTTP 400)."""


class SavedModelPredictor:
    """The `serving_default` signature of a SavedModel, with checked JSON inputs.

    Args:
        model_dir: the SavedModel's directory (e.g. from `model.export` or
            `cfkeras.export.export_text_classifier`).
        signature: the signature to serve.

    Example:

    >>> predictor = cfkeras.serving.SavedModelPredictor("/tmp/exported")  # doctest: +SKIP
    >>> predictor.predict({"inputs": [[0.1, 0.2, 0.3, 0.4]]})  # doctest: +SKIP
    {'outputs': [[0.53]]}
    """

    def __init__(self, model_dir, signature="serving_default"):
        self.model_dir = str(model_dir)
        self.loaded = tf.saved_model.load(self.model_dir)
        if signature not in self.loaded.signatures:
            raise ValueError(
                f"{self.model_dir} has no signature {signature!r}; it has "
                f"{sorted(self.loaded.signatures)}."
            )
        self.function = self.loaded.signatures[signature]
        self.inputs = dict(self.function.structured_input_signature[1])
        if not self.inputs:
            raise ValueError(f"The signature {signature!r} takes no named inputs.")

    def warm_up(self):
        """Runs the signature once on one example of zeros (empty strings).

        Its first call initialises and optimises the graph (about a second
        on a small CPU model); done before serving, no client waits for it.
        Inputs whose shape is not known beyond the batch are skipped.
        """
        tensors = {}
        for name, spec in self.inputs.items():
            shape = [
                1 if size is None and axis == 0 else size
                for axis, size in enumerate(spec.shape.as_list())
            ]
            if None in shape:
                return False
            tensors[name] = (
                tf.zeros(shape, spec.dtype) if spec.dtype != tf.string else tf.fill(shape, "")
            )
        self.function(**tensors)
        return True

    def metadata(self):
        """The signature's inputs and outputs, as JSON-ready dicts."""

        def describe(spec):
            return {"dtype": spec.dtype.name, "shape": spec.shape.as_list()}

        outputs = self.function.structured_outputs
        return {
            "inputs": {name: describe(spec) for name, spec in self.inputs.items()},
            "outputs": {name: describe(t) for name, t in outputs.items()},
        }

    def predict(self, request):
        """Answers a parsed request dict; raises `RequestError` if it is malformed."""
        if not isinstance(request, dict):
            raise RequestError("The request must be a JSON object.")
        keys = set(request) & {"inputs", "instances"}
        if len(keys) != 1:
            raise RequestError('The request must hold exactly one of "inputs" or "instances".')
        if "inputs" in request:
            columns = self._columns(request["inputs"])
        else:
            columns = self._columns_of_instances(request["instances"])
        tensors = self._tensors(columns)
        outputs = {name: value.numpy() for name, value in self.function(**tensors).items()}
        if "inputs" in request:
            if len(outputs) == 1:
                return {"outputs": _to_json(next(iter(outputs.values())))}
            return {"outputs": {name: _to_json(value) for name, value in outputs.items()}}
        if len(outputs) == 1:
            return {"predictions": _to_json(next(iter(outputs.values())))}
        batch = len(next(iter(outputs.values())))
        return {
            "predictions": [
                {name: _to_json(value[k]) for name, value in outputs.items()} for k in range(batch)
            ]
        }

    # === Checks ===

    def _columns(self, inputs):
        if isinstance(inputs, dict):
            unknown, missing = set(inputs) - set(self.inputs), set(self.inputs) - set(inputs)
            if unknown or missing:
                raise RequestError(
                    f"The inputs are {sorted(self.inputs)}; unknown: {sorted(unknown)}, "
                    f"missing: {sorted(missing)}."
                )
            return inputs
        if len(self.inputs) != 1:
            raise RequestError(f"The model takes several inputs; name them: {sorted(self.inputs)}.")
        return {next(iter(self.inputs)): inputs}

    def _columns_of_instances(self, instances):
        if not isinstance(instances, list):
            raise RequestError('"instances" must be a list of examples.')
        if not instances:
            raise RequestError("The batch is empty (0 instances).")
        if len(self.inputs) == 1:
            return {next(iter(self.inputs)): instances}
        if not all(isinstance(instance, dict) for instance in instances):
            raise RequestError(
                f"The model takes several inputs; every instance must name them: "
                f"{sorted(self.inputs)}."
            )
        names = set(self.inputs)
        if any(set(instance) != names for instance in instances):
            raise RequestError(f"Every instance must hold exactly the inputs {sorted(names)}.")
        return {name: [instance[name] for instance in instances] for name in names}

    def _tensors(self, columns):
        tensors, batch = {}, None
        for name, spec in self.inputs.items():
            value = _array(name, columns[name], spec)
            if value.ndim == 0 or value.shape[0] == 0:
                raise RequestError(f"Input {name!r}: the batch is empty.")
            if batch is not None and value.shape[0] != batch:
                raise RequestError("The inputs have different batch sizes.")
            batch = value.shape[0]
            tensors[name] = tf.constant(value, dtype=spec.dtype)
        return tensors


def _array(name, value, spec):
    """`value` as a NumPy array of `spec`'s dtype and shape, or a `RequestError`."""
    try:
        array = np.array(value, dtype=object)
    except ValueError as error:
        raise RequestError(f"Input {name!r} is not a rectangular array: {error}") from error
    expected = spec.shape
    if array.ndim != expected.rank:
        raise RequestError(
            f"Input {name!r} must have rank {expected.rank} (shape {expected.as_list()}); "
            f"received rank {array.ndim} (shape {list(array.shape)})."
        )
    for axis, (size, want) in enumerate(zip(array.shape, expected.as_list())):
        if want is not None and size != want:
            raise RequestError(
                f"Input {name!r}: axis {axis} must have size {want}; received {size}."
            )
    leaves = array.reshape(-1)
    dtype = spec.dtype
    if dtype == tf.string:
        if not all(isinstance(v, str) for v in leaves):
            raise RequestError(f"Input {name!r} must hold strings ({dtype.name}).")
        try:
            return np.array([v.encode("utf-8") for v in leaves], dtype=object).reshape(array.shape)
        except UnicodeEncodeError as error:
            raise RequestError(f"Input {name!r} holds a string that is not UTF-8.") from error
    if dtype == tf.bool:
        if not all(isinstance(v, bool) for v in leaves):
            raise RequestError(f"Input {name!r} must hold booleans.")
        return array.astype(bool)
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in leaves)
    if not numbers:
        raise RequestError(f"Input {name!r} must hold numbers ({dtype.name}).")
    if dtype.is_integer:
        if not all(float(v).is_integer() for v in leaves):
            raise RequestError(f"Input {name!r} must hold integers ({dtype.name}).")
        info = np.iinfo(dtype.as_numpy_dtype)
        if leaves.size and (min(leaves) < info.min or max(leaves) > info.max):
            raise RequestError(f"Input {name!r} holds integers out of {dtype.name}'s range.")
        return array.astype(dtype.as_numpy_dtype)
    array = array.astype(np.float64)
    if not np.all(np.isfinite(array)):
        raise RequestError(f"Input {name!r} holds NaN or infinite values.")
    return array.astype(dtype.as_numpy_dtype)


def _to_json(value):
    if value.dtype == object:
        return np.vectorize(lambda b: b.decode("utf-8", "replace"), otypes=[object])(value).tolist()
    return value.tolist()


# === HTTP ===


def make_server(model_dir, host="127.0.0.1", port=8501, name="model"):
    """A `ThreadingHTTPServer` answering TF Serving's REST requests for `model_dir`.

    Call `serve_forever()` on it (`shutdown()` from another thread to stop);
    `server.server_address` holds the port actually bound (for `port=0`).
    """
    predictor = SavedModelPredictor(model_dir)
    predictor.warm_up()
    prefix = f"/v1/models/{name}"

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args):  # noqa: A002 - the base class's name
            pass

        def reply(self, status, body):
            data = json.dumps(body).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == prefix:
                status = {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK"}}
                self.reply(200, {"model_version_status": [status]})
            elif self.path == prefix + "/metadata":
                self.reply(200, {"model_spec": {"name": name}, "metadata": predictor.metadata()})
            else:
                self.reply(404, {"error": f"Not found: {self.path}"})

        def do_POST(self):
            if self.path != prefix + ":predict":
                self.reply(404, {"error": f"Not found: {self.path}; POST {prefix}:predict"})
                return
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError:
                self.reply(411, {"error": "A Content-Length header is required."})
                return
            if not 0 <= length <= MAX_BODY_BYTES:
                self.close_connection = True
                self.reply(413, {"error": f"The body must be at most {MAX_BODY_BYTES} bytes."})
                return
            body = self.rfile.read(length)
            try:
                try:
                    request = json.loads(body.decode("utf-8"))
                except UnicodeDecodeError as error:
                    raise RequestError(f"The body is not UTF-8: {error}") from error
                except json.JSONDecodeError as error:
                    raise RequestError(f"The body is not JSON: {error}") from error
                self.reply(200, predictor.predict(request))
            except RequestError as error:
                self.reply(400, {"error": str(error)})
            except (tf.errors.OpError, ValueError, TypeError) as error:
                self.reply(500, {"error": f"{type(error).__name__}: {error}"})

    class Server(ThreadingHTTPServer):
        # The listen backlog: socketserver's default of 5 makes a burst of
        # concurrent clients wait for SYN retransmission (about 1 s).
        request_queue_size = 128
        daemon_threads = True

    return Server((host, port), Handler)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8501)
    parser.add_argument("--name", default="model")
    args = parser.parse_args(argv)
    server = make_server(args.model_dir, args.host, args.port, args.name)
    host, port = server.server_address[:2]
    print(f"serving {args.name} on http://{host}:{port}", flush=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        thread.join()
    except KeyboardInterrupt:
        server.shutdown()


if __name__ == "__main__":
    sys.exit(main())
