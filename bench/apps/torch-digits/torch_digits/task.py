"""The model and the data: a one-hidden-layer MLP on scikit-learn's digits."""

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

torch.set_num_threads(1)  # one core per client: ten clients share two cores


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def load_data(partition_id: int, num_partitions: int):
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x / 16.0, y, test_size=0.2, random_state=0, stratify=y)
    mine = np.array_split(np.random.default_rng(7).permutation(len(y_train)), num_partitions)[partition_id]
    as_tensors = lambda a, b: (torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.long))  # noqa: E731
    return as_tensors(x_train[mine], y_train[mine]), as_tensors(x_test, y_test)


def get_weights(model: nn.Module) -> list[np.ndarray]:
    return [v.detach().cpu().numpy() for v in model.state_dict().values()]


def set_weights(model: nn.Module, weights: list[np.ndarray]) -> None:
    model.load_state_dict({k: torch.tensor(w) for k, w in zip(model.state_dict().keys(), weights)})


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    with torch.no_grad():
        out = model(x)
        return float(nn.functional.cross_entropy(out, y)), float((out.argmax(1) == y).float().mean())
