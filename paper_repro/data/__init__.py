"""Datasets in their real on-disk formats, the embedded synthetic benchmark, transforms and subsets."""
