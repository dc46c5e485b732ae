"""What to run, validated at the edge: train, sweep and ablation specs, their `--set` overrides,
and the search space's translation into Optuna samplers and trainer configs."""
