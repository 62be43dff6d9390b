"""Benchmarks: memory replay, offline throughput, online serving."""
