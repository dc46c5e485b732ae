"""The XGD trainer: models, data, CAMs, losses, metrics and the worker loop (plain Python inside)."""
