"""
Fuzz targets (run by hand, not by pytest) and what they share with the
fuzz tests; see docs/conformance.rst.
"""
