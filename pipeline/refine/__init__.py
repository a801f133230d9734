"""Quality-regularised iterative refinement: the refinement loop, its training workflow and the refined predictors."""
