"""Fabric: a Data Fabric connector gateway and query engine."""

__version__ = "0.1.0"
