"""The OMOP CDM v5.4 schema: typed models generated from the official specification
(``models``), the schema layout (``layout``) and the spec parser (``spec``)."""
