"""The database layer: the pool, the embedded server, migrations, LISTEN/NOTIFY, every query
(``queries.sql``) and the typed calls that run them."""
