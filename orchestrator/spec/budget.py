"""The currencies a `compare` budget is counted in (orchestrator.spec.compare). A module of its own
because the CLI's parser lists them and must not import pydantic to build `--help`."""

BUDGETS = ("iterations", "time")
