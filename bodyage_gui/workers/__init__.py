"""Background workers: core work in threads, results and progress back through Qt signals."""
