"""The configs cnnlab ships: ``default.yaml`` and ``presets/`` (package data, read by ``cnnlab.shipped``)."""
