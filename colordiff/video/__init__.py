"""Video colorization: shots, keyframes colorized by the model, chroma propagated along optical flow."""
