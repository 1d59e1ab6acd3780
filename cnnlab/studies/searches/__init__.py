"""Searches: Optuna tunes a spec's space by k-fold cross-validation, then refits the best."""
