"""Running specs: one training run, a sweep on Ray Tune (trial executors, the driver's callback,
teacher cache, placement-group reaper, live view, failures), ablations and dry runs."""
