"""Benchmark evaluation: scoring model answers as the benchmarks (VQAv2, RefCOCO, POPE, MME, ...) define it."""
