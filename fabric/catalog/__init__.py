"""Catalog: connections, discovered tables, the entities selected for apps."""
