"""The ablation and search specs cnnlab ships (package data, read by ``cnnlab.shipped``)."""
