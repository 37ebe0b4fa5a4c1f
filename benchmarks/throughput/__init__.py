"""The training-throughput benchmark behind ``benchmarks/train_throughput.py`` (see its docstring)."""
