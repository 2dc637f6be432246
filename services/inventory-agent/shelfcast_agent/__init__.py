"""Shelfcast's inventory agent: a Gymnasium simulator, classical policies, a DP reference, a DQN and the Kafka loop."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
