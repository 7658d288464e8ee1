"""A trivial count query over Flower's deployment engine, for bench/flower_baseline.py."""
