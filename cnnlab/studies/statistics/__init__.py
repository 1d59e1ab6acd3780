"""Decision rules and their calibration: paired comparisons, α-spending looks, power. Pure numpy and scipy."""
