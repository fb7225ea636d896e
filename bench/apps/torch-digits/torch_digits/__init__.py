"""torch-digits: a Flower app with PyTorch."""
