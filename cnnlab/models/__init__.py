"""The configurable ConvNet, its norm layers and its per-layer arithmetic."""
