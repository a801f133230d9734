"""Synthetic phantoms written in each data set's real on-disk layout (LiTS, BraTS, Learn2Reg lung, bone SPECT), the
datalists that fall back to them when no real folder is given, and the deterministic case splits."""
