"""What the applications and the command line share about failing: the exit statuses and the usage error."""

EXIT_OK, EXIT_FAILURES, EXIT_USAGE = 0, 1, 2  # all done | some inputs failed (the rest done) | nothing could run


class UsageError(ValueError):
    """A command-line mistake (missing input path, unusable model folder): exit status 2."""
