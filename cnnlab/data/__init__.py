"""Data: sources, stratified splits and folds, and in-memory batching."""
