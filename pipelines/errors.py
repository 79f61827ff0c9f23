"""The two ways a midprobe command fails, mapped to the documented exit codes."""


class InputError(Exception):
    """Bad input (config, paths, data): exit code 2, one line naming what is wrong."""

    exit_code = 2


class StageFailed(Exception):
    """A stage run failed: exit code 1."""

    exit_code = 1
