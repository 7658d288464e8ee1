"""Connectors that map local sources (FHIR, SNDS, CSV) into OMOP. Built by the connectors
issue."""
