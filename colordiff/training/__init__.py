"""What the training scripts share: config schema, accelerate loop, checkpoints, losses, validation."""
