"""Weights & Biases: the runs cnnlab logs, a study's summary run, and cnnlab sync."""
