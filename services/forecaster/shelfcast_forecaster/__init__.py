"""The forecaster: probabilistic demand forecasts, their backtests against statistical baselines, and serving."""
