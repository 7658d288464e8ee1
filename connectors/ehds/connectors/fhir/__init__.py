"""FHIR R4 connector: bulk-export NDJSON (plain or gzip) and Bundles into OMOP CDM v5.4.

Modules, in the order data flows: ``reader`` (find files, stream blocks and Bundle entries),
``records`` (one resource: parse, validate with fhir.resources R4B, map; reused by Spark),
``mappers`` (per resource type), ``fields`` and ``codes`` (FHIR values and fixed code tables),
``pipeline`` (worker processes writing staging parts), ``observation_period`` (derived after
staging), ``connector`` (``FhirConnector``), ``scaleup`` (a larger bulk export with new ids, for
benchmarks and demos). Mapping choices: docs/connectors/fhir.md.
"""
