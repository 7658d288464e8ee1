"""The node agent: runs approved analyses on its own OMOP CDM and releases only what its
policy allows. Built by the federation core issue."""
