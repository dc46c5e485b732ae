"""Command line, specs, sweeps, MLflow, aggregator and export around the XGD trainer."""
