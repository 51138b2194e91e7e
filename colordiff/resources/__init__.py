"""Data files shipped with the package (the ImageNet class-name table)."""
