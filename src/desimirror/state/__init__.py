"""The state layer: the mirror's SQLite manifest, its schema and migrations, and the
one-writer lock. The only place SQL lives; every stage meets the others here."""
