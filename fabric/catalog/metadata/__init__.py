"""The metadata store: one SQL implementation, and a driver per database."""
