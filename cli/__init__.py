"""memtrace's command line."""
