"""air-relay's test suite; a package so that bench/ can import its fault kit."""
