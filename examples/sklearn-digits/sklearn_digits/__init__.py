"""sklearn-digits: a Flower app with scikit-learn."""
