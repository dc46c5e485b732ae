"""Datasets by kind (synthetic, ttpla, voc, folder) behind one `build_dataset`."""


class DataError(ValueError):
    """Bad data on disk: one line that names the file and what is wrong."""
