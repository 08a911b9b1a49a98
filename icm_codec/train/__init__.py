"""Training system: data, masks, the training loop and rate-distortion evaluation."""
