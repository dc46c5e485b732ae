"""Around the XGD trainer (`trainables`), in the order data flows: `spec` (what to run), `run`
(trials on Ray Tune), `tracking` (MLflow), `results` (report, export); `bench`, `commands` and
`cli` (the command line) on top."""
