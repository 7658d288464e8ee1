"""Federated analyses: each holds its parameters, node-side computation and aggregation.

base.py          the Analysis contract, parameter validation, canonical JSON
registry.py      analyses by name and version
person_count.py  persons by sex and age band (the demo's analysis)
testing.py       analyses for fault tests (blocking, large result); only a test policy
                 allows them
"""
