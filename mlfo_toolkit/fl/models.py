"""NumPy models of the FL pipelines: `simple` (softmax regression) and `complex` (an MLP)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from mlfo_toolkit.errors import ValidationError

Params = list[NDArray[np.float64]]
MODEL_KINDS = ("simple", "complex")
HIDDEN_UNITS = 64


def init_params(kind: str, num_features: int, num_classes: int, seed: int = 0) -> Params:
    """Fresh weights for a model kind (He initialisation, zero biases)."""
    rng = np.random.default_rng(seed)
    if kind == "simple":
        return [
            rng.normal(0, np.sqrt(2 / num_features), (num_features, num_classes)),
            np.zeros(num_classes),
        ]
    if kind == "complex":
        return [
            rng.normal(0, np.sqrt(2 / num_features), (num_features, HIDDEN_UNITS)),
            np.zeros(HIDDEN_UNITS),
            rng.normal(0, np.sqrt(2 / HIDDEN_UNITS), (HIDDEN_UNITS, num_classes)),
            np.zeros(num_classes),
        ]
    raise ValidationError(
        f"unknown model '{kind}'", field="model", hint=f"known: {', '.join(MODEL_KINDS)}"
    )


def update_bytes(kind: str, num_features: int, num_classes: int) -> int:
    """The bytes of one packed update of a model kind (float64), without building it."""
    if kind == "simple":
        count = num_features * num_classes + num_classes
    else:
        count = num_features * HIDDEN_UNITS + HIDDEN_UNITS + HIDDEN_UNITS * num_classes + num_classes
    return 8 * count


def pack(params: Params) -> Params:
    """The model's arrays as one flat vector: one object in a Flower message instead of one per array. Every
    request Flower's Fleet API makes carries one object, so a round of the two-layer model costs about 40 %
    fewer requests; the strategies mlfo offers aggregate element-wise, so the result is the same."""
    return [np.concatenate([np.asarray(p, dtype=np.float64).ravel() for p in params])]


def unpack(packed: Params, kind: str, num_features: int, num_classes: int) -> Params:
    """The arrays `pack` flattened, in the shapes of `kind` (an unpacked list is returned as it is)."""
    if len(packed) != 1:
        return packed
    shapes = [p.shape for p in init_params(kind, num_features, num_classes)]
    sizes = [int(np.prod(shape)) for shape in shapes]
    flat = np.asarray(packed[0])
    if flat.size != sum(sizes):
        raise ValueError(f"a packed {kind} model has {sum(sizes)} values, not {flat.size}")
    return [part.reshape(shape) for part, shape in zip(np.split(flat, np.cumsum(sizes)[:-1]), shapes)]


def _softmax(logits: NDArray[np.float64]) -> NDArray[np.float64]:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]


def _forward(params: Sequence[NDArray[np.float64]], x: NDArray[np.float64]) -> tuple[
    NDArray[np.float64], NDArray[np.float64] | None
]:
    if len(params) == 2:
        return x @ params[0] + params[1], None
    hidden = np.maximum(0.0, x @ params[0] + params[1])
    return hidden @ params[2] + params[3], hidden


def loss_and_grads(
    params: Sequence[NDArray[np.float64]], x: NDArray[np.float64], y: NDArray[np.int64]
) -> tuple[float, Params]:
    """Mean cross-entropy on (x, y) and its gradient with respect to every parameter."""
    logits, hidden = _forward(params, x)
    probs = _softmax(logits)
    n = len(y)
    loss = float(-np.log(probs[np.arange(n), y] + 1e-12).mean())
    delta = probs
    delta[np.arange(n), y] -= 1.0
    delta /= n
    if hidden is None:
        return loss, [x.T @ delta, delta.sum(axis=0)]
    grad_w2 = hidden.T @ delta
    grad_b2 = delta.sum(axis=0)
    back = (delta @ params[2].T) * (hidden > 0)
    return loss, [x.T @ back, back.sum(axis=0), grad_w2, grad_b2]


def train(
    params: Sequence[NDArray[np.float64]],
    x: NDArray[np.float64],
    y: NDArray[np.int64],
    *,
    epochs: int,
    learning_rate: float,
    batch_size: int,
    seed: int = 0,
    proximal_mu: float = 0.0,
) -> tuple[Params, float]:
    """Mini-batch SGD from `params`; FedProx's proximal term when `proximal_mu` > 0."""
    start = [p.copy() for p in params]
    current = [p.copy() for p in params]
    rng = np.random.default_rng(seed)
    losses = []
    for _ in range(epochs):
        order = rng.permutation(len(y))
        for begin in range(0, len(y), batch_size):
            batch = order[begin : begin + batch_size]
            loss, grads = loss_and_grads(current, x[batch], y[batch])
            losses.append(loss)
            for p, g, p0 in zip(current, grads, start):
                p -= learning_rate * (g + proximal_mu * (p - p0))
    return current, float(np.mean(losses)) if losses else 0.0


def evaluate(
    params: Sequence[NDArray[np.float64]], x: NDArray[np.float64], y: NDArray[np.int64]
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of the model on (x, y)."""
    logits, _ = _forward(params, x)
    probs = _softmax(logits)
    loss = float(-np.log(probs[np.arange(len(y)), y] + 1e-12).mean())
    accuracy = float((probs.argmax(axis=1) == y).mean())
    return loss, accuracy
