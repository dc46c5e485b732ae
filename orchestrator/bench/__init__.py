"""Benchmarks: one training step of every distillation variant side by side, and the per-trial
cost of the sweep machinery."""
