"""Studies over the one run path: ablations and cross-validated searches in Optuna storages."""
