"""Counterfactual adversarial training, CAT (Wang et al., Findings of EMNLP 2021)."""

import copy

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from cfkeras import _keras_private
from cfkeras.encoders import LayerwiseEncoder, masked_mean_pool
from cfkeras.models import graph
from cfkeras.models.trainer import PairTrainer, minimize, reducible_logs, scale
from cfkeras.pairs import flatten_pair_batch, is_pair

PARTNERS = ("permutation",)
# The statistics of a CAT step, logged as metrics (training only).
CAT_METRICS = (
    "crm_loss",
    "cal_objective_before",
    "cal_objective_after",
    "cat_lambda",
    "crm_weight",
    "crm_clipped",
    "counterfactual_flip_rate",
)


def sample_gamma(shape, concentration, seed, tries=16):
    """Gamma(concentration, 1) draws that compile under XLA, from a stateless seed.

    TensorFlow's gamma sampler (behind `keras.random.beta`) has no XLA
    kernel. Marsaglia & Tsang (2000): for `a >= 1`, `d = a - 1/3`, `c =
    1/sqrt(9d)`, `x ~ N(0, 1)`, `v = (1 + c x)^3`, `u ~ U(0, 1)`; accept
    `d v` when `v > 0` and `log u < x^2/2 + d - d v + d log v` (probability
    above 0.95 for every `a >= 1`); `a < 1` is boosted, `G(a) = G(a + 1)
    U^(1/a)`. `tries` proposals are drawn at once and the first accepted one
    kept (all rejected: probability below 0.05^16).

    Args:
        shape: the shape of the draws.
        concentration: `a > 0`.
        seed: a stateless seed, an int tensor of shape `(2,)`: the same seed
            gives the same draws.
    """
    a = float(concentration)
    boosted = a + 1.0 if a < 1.0 else a
    d = boosted - 1.0 / 3.0
    c = 1.0 / (9.0 * d) ** 0.5
    x = tf.random.stateless_normal((tries, *shape), seed=fold_seed(seed, 0))
    u = tf.random.stateless_uniform((tries, *shape), seed=fold_seed(seed, 1))
    v = (1.0 + c * x) ** 3
    safe_v = ops.where(v > 0, v, ops.ones_like(v))
    accept = ops.logical_and(v > 0, ops.log(u) < 0.5 * x * x + d - d * safe_v + d * ops.log(safe_v))
    first = ops.argmax(ops.cast(accept, "int32"), axis=0)
    draw = ops.take_along_axis(d * safe_v, first[None], axis=0)[0]
    if a < 1.0:
        boost = tf.random.stateless_uniform(
            shape, seed=fold_seed(seed, 2), minval=1e-37, maxval=1.0
        )
        draw = draw * boost ** (1.0 / a)
    return draw


def sample_beta(shape, alpha, beta, seed):
    """Beta(α, β) draws that compile under XLA: `X / (X + Y)`, X, Y Gamma.

    `seed` is a stateless seed `(2,)` (see `sample_gamma`).
    """
    x = sample_gamma(shape, alpha, fold_seed(seed, 0))
    y = sample_gamma(shape, beta, fold_seed(seed, 1))
    return x / ops.maximum(x + y, 1e-30)


def fold_seed(seed, index):
    """The stateless seed of sub-stream `index` of `seed` (an int tensor `(2,)`)."""
    seed = tf.cast(ops.convert_to_tensor(seed), tf.int64)
    return tf.random.experimental.stateless_fold_in(seed, index)


def default_mix_layers(num_layers):
    """Q scaled to an encoder's depth: the paper's {8, 9, 10} of BERT-base's 12.

    Layers `round(8/12 L) .. round(10/12 L)`: {4, 5} for 6 layers (MiniLM),
    {1, 2} for 2.
    """
    low, high = round(num_layers * 8 / 12), round(num_layers * 10 / 12)
    return tuple(m for m in range(max(low, 1), high + 1) if m <= num_layers)


@keras.saving.register_keras_serializable(package="cfkeras")
class CounterfactualAdversarialModel(PairTrainer):
    """Trains a transformer text classifier with CAT: CMIX, CAL and CRM.

    Implements Wang et al., "Counterfactual Adversarial Learning with
    Representation Interpolation", Findings of EMNLP 2021 (section 3,
    Algorithm 1, appendix A), whose authors published no code; every choice
    the paper leaves open is marked *(ours)* below.

    **CMIX** (Eq. 4): for each example `x_i` of a batch, a partner `x_j` is
    drawn from the same batch (*(ours)*: the example `s` places further in
    the shuffled batch, `s ~ U{1, .., n - 1}` per batch, so no example is its
    own partner); one layer `m` per batch is drawn uniformly from
    `mix_layers` (Q; *(ours)*: one per batch, where Algorithm 1 can be read
    as one per example) and `λ_i ~ Beta(α, β)`. Both run through the encoder
    to layer `m` (Hugging Face's `hidden_states[m]`; *(ours)*: in one pass
    over the batch, `h_j,m` being the partner's row of it, with the same
    dropout draw), `h~_m = λ_i h_j,m + (1 - λ_i) h_i,m`, and the
    forward pass continues from layer `m + 1` with the padding mask of `x_i`
    (the paper's best choice), then the masked mean pooling and the head.
    Labels are not mixed.

    **CAL** (Eq. 5): `λ_i` is then optimised for `cal_steps` steps of
    gradient ascent of step size `cal_step_size` on

    ```
    J(λ_i) = -|λ_i| + γ L(M(h~_i), y_i) + η Φ(M(h~_i))
    ```

    `Φ` the maximum class probability, `|λ|` the L_p norm of a scalar for
    any p. *(ours)*: plain gradient steps, and `λ` clipped to [0, 1] after
    each, so that `h~` stays an interpolation (the paper is silent).

    **CRM** (Eq. 9-11): `(1/n) Σ_i B(ω_i) L(M(h_i), y_i)`, `ω_i =
    Φ(M(h_i)) / Φ(M(h~_i))` not back-propagated through, `B` clipping to
    `[A1, A2] = crm_clip`.

    **Schedule** (Algorithm 1): the first `warmup_epochs` epochs are plain
    ERM; after them every batch gets a CRM update (with `crm_optimizer`, by
    default AdamW at `crm_learning_rate`, A.5's 2e-5 — *(ours)*: AdamW, with
    weight decay 0.01, as BERT fine-tuning; the paper names no optimiser)
    and then an ERM update with the compiled optimizer. `use_cal=False` is
    CAT* (λ sampled, not optimised). Every extra forward pass runs in
    training mode (dropout on). The compiled step is one XLA program per
    phase: the schedule retraces it once, when CAT starts.

    The wrapped model must be an encoder classifier whose layer
    `encoder_layer` is a `cfkeras.encoders.LayerwiseEncoder` and whose layer
    `pooled_layer` is its masked mean pooling (e.g.
    `cfkeras.encoders.encoder_classifier`); it outputs logits (compile with
    `from_logits=True`) or softmax/sigmoid probabilities. `Φ` is read from
    probabilities either way.

    **Cached lower layers** (a speed option, *(ours)*): with
    `encoder_classifier(backbone, start_layer=c)` fed by
    `cfkeras.encoders.cached_hidden_states(backbone, x, c)`, `c <=
    min(mix_layers)`, the layers below `c` are frozen and run once; CMIX
    starts from the cached states and CAT trains layers `c ..` and the head.
    The paper fine-tunes every layer: this mode changes the method (frozen
    lower layers), so compare it with ERM in the same mode.

    Data: ordinary `(x, y)` batches. Batches of pairs are flattened (both
    members as examples, the augmentation data), partners still drawn
    in-batch, so CAT is label-free as in the paper.

    Metrics (training): `loss`, `main_loss` (ERM), and during CAT
    `crm_loss`, `cal_objective_before` / `cal_objective_after` (mean `J`
    over the batch before and after CAL's steps), `cat_lambda` (mean final
    λ), `crm_weight` (mean `B(ω)`), `crm_clipped` (fraction of `ω` outside
    `crm_clip`) and `counterfactual_flip_rate` (how often `M(h~_i)`'s
    decision differs from `y_i`). Validation reports `loss`, `main_loss` and
    the compiled metrics.

    Args:
        model: the classifier to train (see above).
        encoder_layer: name of its `LayerwiseEncoder` layer.
        pooled_layer: name of its pooling layer (the head reads its output).
        mix_layers: Q, layers `m` (1 .. num_layers) to mix after; default
            `default_mix_layers(num_layers)`.
        alpha, beta: Beta(α, β) of λ (paper: 0.3, 0.3).
        use_cal: optimise λ with CAL (False: CAT*).
        cal_steps: L, CAL's steps (paper: 3).
        cal_step_size: CAL's step size (paper: 2e-2).
        gamma: γ of CAL (paper: 10).
        eta: η of CAL (paper: 20).
        crm_clip: `(A1, A2)` of B (paper: (0, 10)).
        crm_learning_rate: CRM's learning rate (paper, A.5: 2e-5).
        crm_optimizer: optional optimizer for CRM (default: AdamW at
            `crm_learning_rate`, weight decay 0.01).
        warmup_epochs: epochs of plain ERM first (paper: 1).
        partner: `"permutation"`: in-batch partners, a random non-zero
            rotation of the (shuffled) batch.
        seed: seed of the random draws (partners, m, λ); None draws one
            from NumPy's global generator (so `keras.utils.set_random_seed`
            fixes it). The draws of a step are a stateless function of
            `(seed, optimizer.iterations)`: a run resumed from a checkpoint
            (`keras.callbacks.BackupAndRestore`, which restores the
            optimizer's counter) draws what the uninterrupted run drew.

    Distributed training (`tf.distribute`): the partners, `m` and λ are drawn
    for the global batch, identically on every replica, and each replica
    takes the rows it holds (its partners' hidden states are gathered from
    all replicas), so a mirrored step draws what one device would. Dropout
    masks are drawn per replica, as in Keras.

    Example:

    >>> import keras_hub, numpy as np
    >>> backbone = keras_hub.models.BertBackbone(
    ...     vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=16,
    ...     intermediate_dim=32, max_sequence_length=8)
    >>> model = cfkeras.encoders.encoder_classifier(backbone, num_classes=2)
    >>> cat = cfkeras.models.CounterfactualAdversarialModel(model, seed=0)
    >>> cat.compile(optimizer=keras.optimizers.AdamW(1e-5),
    ...     loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    >>> mask = np.arange(8) < np.array([[8], [5], [6], [3]])
    >>> x = {"token_ids": np.where(mask, 3, 0), "segment_ids": 0 * mask,
    ...      "padding_mask": mask}
    >>> history = cat.fit(x, np.array([0, 1, 0, 1]), batch_size=4, epochs=2, verbose=0)
    >>> "crm_loss" in history.history
    True
    """

    def __init__(
        self,
        model,
        encoder_layer="encoder",
        pooled_layer="pooled",
        mix_layers=None,
        alpha=0.3,
        beta=0.3,
        use_cal=True,
        cal_steps=3,
        cal_step_size=2e-2,
        gamma=10.0,
        eta=20.0,
        crm_clip=(0.0, 10.0),
        crm_learning_rate=2e-5,
        crm_optimizer=None,
        warmup_epochs=1,
        partner="permutation",
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        encoder = model.get_layer(encoder_layer)
        if not isinstance(encoder, LayerwiseEncoder):
            raise ValueError(
                f"encoder_layer={encoder_layer!r} must be a cfkeras.encoders.LayerwiseEncoder; "
                f"model {model.name!r} has a {type(encoder).__name__} there (build the model "
                "with cfkeras.encoders.encoder_classifier)."
            )
        _, head = graph.split_at_layer(model, pooled_layer)
        num_layers = encoder.num_layers
        mix_layers = default_mix_layers(num_layers) if mix_layers is None else mix_layers
        mix_layers = tuple(sorted({int(m) for m in mix_layers}))
        if not mix_layers or not all(1 <= m <= num_layers for m in mix_layers):
            raise ValueError(
                f"mix_layers must be layers in 1 .. {num_layers} (the encoder's depth); "
                f"received {mix_layers}."
            )
        if mix_layers[0] < encoder.start_layer:
            raise ValueError(
                f"mix_layers {mix_layers} start below the encoder's cached lower layers "
                f"(start_layer={encoder.start_layer}): mix at layers >= {encoder.start_layer}, "
                "or cache fewer layers."
            )
        if alpha <= 0 or beta <= 0:
            raise ValueError(f"alpha and beta must be > 0; received {alpha}, {beta}.")
        if cal_steps < 0 or cal_step_size < 0:
            raise ValueError("cal_steps and cal_step_size must be >= 0.")
        low, high = (float(a) for a in crm_clip)
        if not 0 <= low < high:
            raise ValueError(f"crm_clip must be (A1, A2) with 0 <= A1 < A2; received {crm_clip}.")
        if partner not in PARTNERS:
            raise ValueError(f"partner must be one of {PARTNERS}; received {partner!r}.")
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0; received {warmup_epochs}.")

        self.model = model
        self.encoder_layer = encoder_layer
        self.pooled_layer = pooled_layer
        self.encoder = encoder
        self.head = head
        self.mix_layers = mix_layers
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.use_cal = bool(use_cal)
        self.cal_steps = int(cal_steps)
        self.cal_step_size = float(cal_step_size)
        self.gamma = float(gamma)
        self.eta = float(eta)
        self.crm_clip = (low, high)
        self.crm_learning_rate = float(crm_learning_rate)
        if crm_optimizer is None:
            crm_optimizer = keras.optimizers.AdamW(
                learning_rate=self.crm_learning_rate, weight_decay=0.01, name="crm_adamw"
            )
        self.crm_optimizer = keras.optimizers.get(crm_optimizer)
        self.warmup_epochs = int(warmup_epochs)
        self.partner = partner
        self.seed = seed
        self.draw_seed = int(np.random.randint(2**31 - 1)) if seed is None else int(seed)
        # Set by the schedule (a callback added by `fit`), read when tracing.
        self.cat_active = self.warmup_epochs == 0

        self.cat_trackers = {name: keras.metrics.Mean(name=name) for name in CAT_METRICS}
        self.built = True

    # === Forward ===

    def call(self, inputs, training=None):
        if is_pair(inputs):
            return {key: self.model(value, training=training) for key, value in inputs.items()}
        return self.model(inputs, training=training)

    def serving_model(self):
        return self.model

    def _probabilities(self, outputs):
        """Class probabilities `(batch, classes)` from the model's outputs."""
        activation = graph.output_activation(self.head)
        if activation == "softmax":
            return outputs
        if outputs.shape[-1] == 1:
            p = outputs if activation == "sigmoid" else ops.sigmoid(outputs)
            return ops.concatenate([1.0 - p, p], axis=-1)
        return outputs if activation == "sigmoid" else ops.softmax(outputs, axis=-1)

    def _max_probability(self, outputs):
        """Φ: the maximum class probability, `(batch,)`."""
        return ops.max(ops.cast(self._probabilities(outputs), "float32"), axis=-1)

    def _decisions(self, outputs):
        return ops.argmax(self._probabilities(outputs), axis=-1)

    def _loss(self, y, outputs, sample_weight=None):
        # CAL's objective is not a training loss: undo Keras's per-replica scaling.
        return _keras_private.unscale_loss_for_distribution(
            _keras_private.compute_loss(self, None, y, outputs, sample_weight, True)
        )

    # === CMIX and CAL ===

    def step_seed(self):
        """The stateless seed `(2,)` of this step's draws: `(seed, optimizer.iterations)`."""
        step = 0 if self.optimizer is None else self.optimizer.iterations
        return ops.stack([ops.convert_to_tensor(self.draw_seed, "int64"), ops.cast(step, "int64")])

    def _partners(self, n, seed):
        """Partners in the batch: a random non-zero rotation, `(i + s) mod n`,
        `s ~ U{1, .., n - 1}`, so no example is its own partner (n > 1).

        The batches are shuffled, so each example's partner is a uniformly
        random other example of its batch. No sort: a shuffled or sorted
        permutation in the XLA step made XLA:CPU run the training-mode
        forward passes beside it 15-30x slower.
        """
        n = ops.cast(n, "int32")
        shift = tf.random.stateless_uniform(
            (), seed=fold_seed(seed, 0), minval=1, maxval=ops.maximum(n, 2), dtype=tf.int32
        )
        return (ops.arange(n, dtype="int32") + shift) % ops.maximum(n, 1)

    def draws(self, n, seed):
        """CMIX's draws for a batch of `n`: `partners`, `initial_lambda`, `layer`."""
        index = tf.random.stateless_uniform(
            (), seed=fold_seed(seed, 1), maxval=len(self.mix_layers), dtype=tf.int32
        )
        return {
            "partners": self._partners(n, seed),
            "initial_lambda": sample_beta((n,), self.alpha, self.beta, fold_seed(seed, 2)),
            "layer": ops.take(ops.convert_to_tensor(self.mix_layers, "int32"), index),
        }

    def counterfactual(self, x, y, training=True, draws=None):
        """CMIX then CAL on a batch: the counterfactual representations' outputs.

        Returns a dict: `outputs` (the model's outputs at `h~` with the final
        λ; not differentiated: ω is not back-propagated through), `lambda`
        `(n,)`, `objective_before` and `objective_after` (the mean CAL
        objective before and after its steps), and the draws: `partners`
        (the partner index of each example), `initial_lambda` (CMIX's λ) and
        `layer` (`m`).

        Args:
            x, y: a batch of inputs (the backbone's dict) and their labels.
            training: run the layers in training mode (dropout on), as CAT does.
            draws: optional dict of `partners`, `initial_lambda` and `layer`
                to use instead of random draws (tests, analysis), for this
                batch (this replica's rows under a strategy).
        """
        n = ops.shape(y)[0]
        if draws is None:
            # Drawn for the global batch (see the class): every replica
            # draws the same, takes its rows, and finds the partners among
            # all replicas' examples.
            offset, total = replica_rows(n)
            draws = self.draws(total, self.step_seed())
            rows = lambda t: ops.slice(t, (offset,), (n,))  # noqa: E731
            draws = {
                "partners": rows(draws["partners"]),
                "initial_lambda": rows(draws["initial_lambda"]),
                "layer": draws["layer"],
            }
        partners = ops.convert_to_tensor(draws["partners"], "int32")
        lam = ops.cast(draws["initial_lambda"], "float32")
        layer = ops.cast(draws["layer"], "int32")

        # The batch up to every candidate layer (HF's hidden_states[m]). The
        # partners are in the batch, so x_j's states are x_i's permuted: one
        # pass, not two (the paper runs x_j through the encoder; with dropout
        # on, x_j's states here share the batch's dropout draw).
        h, mask = self.encoder.embed(x, training=training)
        states, start = {}, self.encoder.start_layer
        for m in self.mix_layers:
            h = self.encoder.run_layers(h, mask, start, m, training=training)
            h_i = ops.stop_gradient(h)
            h_j = ops.take(gather_replicas(h_i), partners, axis=0)
            states[m], start = (h_i, h_j), m

        def objective(lam):
            """Mean CAL objective J over the batch, and the outputs at h~."""
            # One continuation for any drawn m: it follows x_i's states until
            # layer m, where they are replaced by the mixture; after m, the
            # mixture runs on with x_i's padding mask.
            first = self.mix_layers[0]
            hidden, previous = states[first][0], first
            for m in self.mix_layers:
                hidden = self.encoder.run_layers(hidden, mask, previous, m, training=training)
                hm_i, hm_j = states[m]
                mixed = lam[:, None, None] * hm_j + (1.0 - lam[:, None, None]) * hm_i
                hidden, previous = ops.where(layer == m, mixed, hidden), m
            sequence = self.encoder.run_layers(hidden, mask, previous, training=training)
            outputs = self.head(masked_mean_pool(sequence, mask), training=training)
            # The compiled loss is the mean of L over the batch.
            value = -ops.mean(ops.abs(lam)) + self.gamma * ops.cast(
                self._loss(y, outputs), "float32"
            )
            return value + self.eta * ops.mean(self._max_probability(outputs)), outputs

        if self.use_cal and self.cal_steps > 0:

            def cal_step(step, carry):
                lam, before = carry
                with tf.GradientTape(watch_accessed_variables=False) as tape:
                    tape.watch(lam)
                    value, _ = objective(lam)
                # Ascent on the sum over examples: each λ_i on its own J(λ_i).
                ascent = tape.gradient(value, lam) * ops.cast(n, "float32")
                lam = ops.clip(lam + self.cal_step_size * ascent, 0.0, 1.0)
                return lam, ops.where(step == 0, value, before)

            lam, before = ops.fori_loop(0, self.cal_steps, cal_step, (lam, ops.zeros(())))
            after, outputs = objective(lam)
        else:
            after, outputs = objective(lam)
            before = after
        return {
            "outputs": ops.stop_gradient(outputs),
            "lambda": ops.stop_gradient(lam),
            "objective_before": ops.stop_gradient(before),
            "objective_after": ops.stop_gradient(after),
            "partners": partners,
            "initial_lambda": ops.cast(draws["initial_lambda"], "float32"),
            "layer": layer,
        }

    # === Losses ===

    def compute_unpaired_losses(self, x, y, sample_weight=None, training=False):
        """ERM: the compiled loss of the model on the batch."""
        y_pred = self.model(x, training=training)
        loss = _keras_private.compute_loss(self, x, y, y_pred, sample_weight, training)
        stats = {"loss": loss, "main_loss": loss, "x": x, "y": y, "y_pred": y_pred}
        stats["sample_weight"] = sample_weight
        return loss, stats

    def compute_pair_losses(self, x, y, sample_weight=None, training=False):
        """Pairs are flattened: both members are ordinary examples."""
        return self.compute_unpaired_losses(*flatten_pair_batch(x, y, sample_weight), training)

    def crm_loss(self, x, y, counterfactual_outputs, sample_weight=None, training=True):
        """CRM (Eq. 10): `(1/n) Σ B(ω_i) L(M(h_i), y_i)` and its statistics."""
        outputs = self.model(x, training=training)
        phi = self._max_probability(outputs)
        phi_tilde = self._max_probability(counterfactual_outputs)
        omega = ops.stop_gradient(phi / ops.maximum(phi_tilde, 1e-12))
        low, high = self.crm_clip
        weight = ops.clip(omega, low, high)
        if sample_weight is not None:
            weight = weight * ops.cast(ops.reshape(sample_weight, (-1,)), weight.dtype)
        loss = _keras_private.compute_loss(self, x, y, outputs, weight, training)
        clipped = ops.mean(ops.cast(ops.logical_or(omega < low, omega > high), "float32"))
        return loss, {"crm_weight": ops.mean(weight), "crm_clipped": clipped}

    # === Steps ===

    def train_step(self, data):
        if not self.cat_active:
            return super().train_step(data)
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        x, y, sample_weight = flatten_pair_batch(x, y, sample_weight)
        variables = self.trainable_weights

        # 1. CMIX + CAL: counterfactual representations (no weight update).
        counterfactual = self.counterfactual(x, y, training=True)
        # 2. CRM update, with its own optimizer and learning rate.
        with tf.GradientTape() as tape:
            crm, crm_stats = self.crm_loss(x, y, counterfactual["outputs"], sample_weight)
            scaled = scale(self.crm_optimizer, crm)
        minimize(self.crm_optimizer, tape, scaled, variables)
        # 3. ERM update, with the compiled optimizer.
        with tf.GradientTape() as tape:
            objective, stats = self.compute_unpaired_losses(x, y, sample_weight, training=True)
            scaled = scale(self.optimizer, objective)
        minimize(self.optimizer, tape, scaled, variables)

        unscale = _keras_private.unscale_loss_for_distribution
        flips = ops.not_equal(
            ops.cast(self._decisions(counterfactual["outputs"]), "int32"),
            ops.cast(self._decisions_of_labels(y), "int32"),
        )
        values = {
            "crm_loss": unscale(crm),
            "cal_objective_before": counterfactual["objective_before"],
            "cal_objective_after": counterfactual["objective_after"],
            "cat_lambda": ops.mean(counterfactual["lambda"]),
            "counterfactual_flip_rate": ops.mean(ops.cast(flips, "float32")),
            **crm_stats,
        }
        for name, value in values.items():
            self.cat_trackers[name].update_state(value)
        return reducible_logs(
            self.update_trackers(stats, paired=False)
            | {name: self.cat_trackers[name].result() for name in CAT_METRICS}
        )

    def _decisions_of_labels(self, y):
        y = ops.convert_to_tensor(y)
        if len(y.shape) == 2 and y.shape[-1] > 1:
            return ops.argmax(y, axis=-1)
        y = ops.reshape(y, (-1,))
        width = self.model.outputs[0].shape[-1]
        return ops.cast(y > 0.5, "int32") if width == 1 else ops.cast(y, "int32")

    def test_step(self, data):
        logs = super().test_step(data)
        return {key: value for key, value in logs.items() if key not in CAT_METRICS}

    def pair_trackers(self):
        # Not pair metrics, but reported only by CAT's training steps: left
        # out of warm-up and validation logs, never shown as zeros.
        return list(self.cat_trackers.values())

    # === Schedule ===

    def fit(self, *args, callbacks=None, **kwargs):
        """`keras.Model.fit`, with CAT's warm-up schedule added to the callbacks."""
        # First, so that CRM's optimizer is built before BackupAndRestore
        # loads a checkpoint holding its state.
        callbacks = [CATSchedule()] + list(callbacks or [])
        return super().fit(*args, callbacks=callbacks, **kwargs)

    def build_crm_optimizer(self):
        """Creates CRM's optimizer state (outside the compiled step, in the
        model's distribution strategy)."""
        if not self.crm_optimizer.built:
            with self.distribute_strategy.scope():
                self.crm_optimizer.build(self.trainable_variables)

    def start_cat(self):
        """Switches from warm-up ERM to CAT (retraces the train step once)."""
        self.build_crm_optimizer()
        self.cat_active = True
        self.make_train_function(force=True)

    # === Config ===

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "model": keras.saving.serialize_keras_object(self.model),
                "encoder_layer": self.encoder_layer,
                "pooled_layer": self.pooled_layer,
                "mix_layers": list(self.mix_layers),
                "alpha": self.alpha,
                "beta": self.beta,
                "use_cal": self.use_cal,
                "cal_steps": self.cal_steps,
                "cal_step_size": self.cal_step_size,
                "gamma": self.gamma,
                "eta": self.eta,
                "crm_clip": list(self.crm_clip),
                "crm_learning_rate": self.crm_learning_rate,
                "crm_optimizer": keras.saving.serialize_keras_object(self.crm_optimizer),
                "warmup_epochs": self.warmup_epochs,
                "partner": self.partner,
                "seed": self.seed,
            }
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        for key in ("model", "crm_optimizer"):
            config[key] = keras.saving.deserialize_keras_object(
                copy.deepcopy(config[key]), custom_objects=custom_objects
            )
        return cls(**config)


def replica_rows(n):
    """`(offset, total)`: this replica's first row in the global batch, and
    the global batch size (`(0, n)` without a strategy or with one replica).
    Replicas are ordered by their id, as `tf.distribute` splits a batch."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return 0, n
    sizes = context.all_gather(ops.reshape(ops.cast(n, "int32"), (1,)), axis=0)
    return ops.sum(sizes[: context.replica_id_in_sync_group]), ops.sum(sizes)


def gather_replicas(t):
    """`t`'s rows of every replica, in replica order (`t` itself without a
    strategy or with one replica)."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return t
    # Collectives carry numbers: booleans go as int32.
    if t.dtype == tf.bool:
        return ops.cast(context.all_gather(ops.cast(t, "int32"), axis=0), "bool")
    return context.all_gather(t, axis=0)


class CATSchedule(keras.callbacks.Callback):
    """Starts CAT after the warm-up epochs (Algorithm 1); added by `fit`."""

    def on_train_begin(self, logs=None):
        # Built outside the compiled step, which must not create variables.
        self.model.build_crm_optimizer()

    def on_epoch_begin(self, epoch, logs=None):
        model = self.model
        if not model.cat_active and epoch >= model.warmup_epochs:
            model.start_cat()
