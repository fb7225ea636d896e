"""Federated learning: datasets, NumPy models, strategies and the Flower apps that run them."""
