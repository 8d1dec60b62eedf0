"""Data utilities: robust image loading (``images``) and, later, datasets."""
