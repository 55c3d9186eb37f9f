"""Results: the in-memory result cache and open statements."""
