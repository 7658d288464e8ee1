"""OMOP Common Data Model v5.4: schema, loading, vocabulary, synthetic data and profiling.

Dependencies point one way: ``ehds.core`` <- ``ehds.omop`` <- connectors and node.
"""
