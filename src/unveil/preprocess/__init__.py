"""Pre-processing: the paper's equalize -> segment -> blurred lung mask -> [0, 1] pipeline, and its cache."""
