"""Benchmarks: figures to read, never assertions (see `make bench`)."""
