"""Experiments: the commands that reproduce the papers' tables (BraTS β sweep, selective methods, SPECT modes,
refinement), the LiTS liver → lesion cascade and the evaluation on real scans."""
