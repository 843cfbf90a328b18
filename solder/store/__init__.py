"""Persistence: the schema, every SQL statement, and the database connection."""
