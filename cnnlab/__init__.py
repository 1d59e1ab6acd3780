"""cnnlab: a PyTorch Lightning lab for comparing ConvNet training techniques."""

__version__ = "0.2.0"
