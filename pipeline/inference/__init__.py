"""Inference: the batch runner and its command line (``varseg infer``), the predictors of each bundle, the 2.5D
inferer."""
