"""MLflow: the tag names, where the store is, the sweep driver's writer and the reader the report
and export use."""
