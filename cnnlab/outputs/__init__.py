"""What cnnlab writes and how it proves it wrote it: owned folders, manifests, atomic swaps."""
