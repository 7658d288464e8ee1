"""The coordinator service and the researcher client. Built by the federation core issue; it
never opens a CDM."""
