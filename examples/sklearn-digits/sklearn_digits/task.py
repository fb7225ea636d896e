"""The model and the data: logistic regression on scikit-learn's bundled digits."""

import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

NUM_CLASSES = 10
NUM_FEATURES = 64


def load_data(partition_id: int, num_partitions: int, seed: int):
    """This client's share of the training split (shuffled with `seed`) and the common held-out split."""
    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    order = np.random.default_rng(seed).permutation(len(y_train))
    mine = np.array_split(order, num_partitions)[partition_id]
    return x_train[mine], y_train[mine], x_test, y_test


def get_model(penalty: str, local_epochs: int) -> LogisticRegression:
    return LogisticRegression(penalty=penalty, max_iter=local_epochs, warm_start=True)


def get_model_params(model: LogisticRegression) -> list[np.ndarray]:
    return [model.coef_, model.intercept_]


def set_model_params(model: LogisticRegression, params: list[np.ndarray]) -> LogisticRegression:
    model.coef_, model.intercept_ = params[0], params[1]
    return model


def set_initial_params(model: LogisticRegression) -> None:
    model.classes_ = np.arange(NUM_CLASSES)
    model.coef_ = np.zeros((NUM_CLASSES, NUM_FEATURES))
    model.intercept_ = np.zeros((NUM_CLASSES,))
