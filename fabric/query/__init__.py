"""Query: compile SQL text against the selection into the source's dialect."""
