"""Benchmarks: run side by side in one invocation, results as JSON + a markdown table."""
