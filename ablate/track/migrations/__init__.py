"""Alembic environment and migrations of the results database (shipped inside the package)."""
