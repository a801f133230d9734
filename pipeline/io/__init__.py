"""Reading and writing: volumes (NIfTI, ITK formats, DICOM series), data set layouts and their auto-detection,
masks written in the input's geometry."""
