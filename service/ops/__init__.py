"""Running it: the command line, the server process, migrations and the embedded cluster."""
