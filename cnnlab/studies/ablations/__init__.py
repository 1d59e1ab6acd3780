"""Ablations: a spec's arms × seeds run as trials, stored, read back, decided and reported."""
