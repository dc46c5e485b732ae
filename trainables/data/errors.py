"""The one error type of the data layer, in its own module so every source can raise it
without importing the package that assembles the sources."""


class DataError(ValueError):
    """Bad data on disk: one line that names the file and what is wrong."""
