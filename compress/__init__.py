"""compress: quantize, prune and export PyTorch models for edge deployment."""
