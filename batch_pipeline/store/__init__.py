"""The data layer: SQL as named constants next to the functions that run it, one module per table."""
