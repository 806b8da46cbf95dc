"""Persistence: SQLAlchemy tables, the database handle, Alembic migrations."""
