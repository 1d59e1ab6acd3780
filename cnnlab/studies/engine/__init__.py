"""The study engine: Optuna storages, the journal, the one trial loop, workers, progress.

It knows no study kind: ablations and searches bring their own store and objective.
"""
