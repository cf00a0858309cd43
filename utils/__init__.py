"""Helpers the notebooks import: weights, images, adaptation, inversion, metrics, figures."""
