"""Selective segmentation from clicks: 2D samples and their maps, padding, the per-image solvers (TV, elastica,
DIP) with their numba kernels, and their evaluation."""
