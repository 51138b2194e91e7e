"""What the applications and the command line share about failing: the exit statuses and the usage error."""

EXIT_OK, EXIT_FAILURES, EXIT_USAGE = 0, 1, 2  # all done | some inputs failed (the rest done) | nothing could run
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, as shells report it); the summary so far is printed


class UsageError(ValueError):
    """A command-line mistake (missing input path, unusable model folder): exit status 2."""
