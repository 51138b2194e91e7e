"""The miniature: both papers' recipes at a size two CPU cores train in well under an hour, on a folder of photos.

base.py builds the stand-in for Stable Diffusion 1.5 (a VAE trained on the photos, a random mini U-Net, the tiny
CLIP); lab.py runs the papers' own scripts on it and scores the results (scripts/miniature.py).
"""
