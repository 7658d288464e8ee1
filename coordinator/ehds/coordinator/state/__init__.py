"""The coordinator's durable state: SQLAlchemy models, the store that owns every query, and the
database plumbing (engine, migrations, one writer thread)."""
