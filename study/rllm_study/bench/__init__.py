"""Benchmarks against a reference measured in the same run: the engine against llama.cpp's own tools
(`engine`), the in-process server path against llama-server (`server`), techniques (`techniques`),
and two engines on one greedy workload (`crosscheck`)."""
