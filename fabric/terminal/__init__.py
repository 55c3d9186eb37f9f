"""What the `fabric` command does in a terminal: argument values, output, the shell."""
