"""The metadata store: its contract, one SQL implementation, and a driver per database."""
