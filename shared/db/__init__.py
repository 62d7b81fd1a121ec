"""PostgreSQL layer: pool, migrations, LISTEN/NOTIFY, queues, the embedded server."""
