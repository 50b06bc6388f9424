"""Writers of each artefact format, and the parity check that gates them."""
