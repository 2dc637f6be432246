"""The forecaster: probabilistic demand forecasts, their backtests against statistical baselines, and serving."""

import os

# Before any module of the package imports TensorFlow or Keras: quiet C++ logs, Keras on the TensorFlow backend.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
