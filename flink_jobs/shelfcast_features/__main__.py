"""`python -m shelfcast_features`: the job's entry point for a Flink cluster (PythonDriver -pym shelfcast_features)."""

from shelfcast.settings import get_settings
from shelfcast_features.job import run
from shelfcast_features.settings import FeatureJobSettings

run(get_settings(), FeatureJobSettings())
