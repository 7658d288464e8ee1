"""A trivial count query, for bench/flower_baseline.py (Flower's engine) and bench/bench_fl.py."""
