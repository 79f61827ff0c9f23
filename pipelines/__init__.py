"""Sweeps, the run store, executors, ranking, reports and the midprobe CLI."""
