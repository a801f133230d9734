"""Evaluation: scores of masks against references (Dice, Jaccard, precision, recall), as plain functions and as
MONAI metrics and ignite handlers."""
