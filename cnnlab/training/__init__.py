"""Training: the LightningModule, optimizers, the Trainer and the one run path."""
