"""varseg pipeline: everything that runs, one sub-package per stage.

* :mod:`pipeline.io`: reading volumes (NIfTI, ITK formats, DICOM series), the data sets' on-disk layouts, masks
  written in the input's geometry.
* :mod:`pipeline.data`: synthetic phantoms in each data set's layout, and the case splits.
* :mod:`pipeline.training`: engines, handlers, MLflow tracking, metrics, 2.5D training samples, fine-tuning.
* :mod:`pipeline.inference`: the batch runner and its command line, the predictors, the 2.5D inferer.
* :mod:`pipeline.selective`: selective segmentation from clicks: samples, per-image solvers and their kernels.
* :mod:`pipeline.refine`: quality-regularised iterative refinement after a bundle's base model.
* :mod:`pipeline.experiments`: the commands that reproduce the papers' tables and the real-data evaluation.

Imports run one way: experiments → refine / inference / training / selective → io / data → transforms, losses,
networks. :mod:`pipeline.cli` is the ``varseg`` command; :mod:`pipeline.paths` says where things live.
"""
