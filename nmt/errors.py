"""The project's exceptions. Each message says what is wrong and where; the CLI prints it as one line.

`exit_code` follows the shell convention the CLI uses: 2 for bad usage, config or input data,
1 for a failure while running (a download that broke, a training run that diverged).
"""


class NmtError(Exception):
    exit_code = 1


class ConfigError(NmtError):
    """A config file, a `--set` override or a command-line option is invalid."""

    exit_code = 2


class ArgumentError(ConfigError):
    """An argument of a call (an API keyword, a request field, a command-line option) is of the wrong type or
    out of bounds. It carries the argument's name, so each front end can name it as its caller wrote it."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message

    def __reduce__(self):  # pickled across processes (the server's attribution child) with both arguments
        return type(self), (self.field, self.message)


class DataError(NmtError):
    """An input corpus or text file cannot be used (misaligned, not UTF-8, missing)."""

    exit_code = 2


class DownloadError(NmtError):
    """A corpus could not be fetched, or its checksum did not match."""


class CheckpointError(NmtError):
    """A run directory or checkpoint is missing, corrupted or unsafe to load."""

    exit_code = 2


class RunBusyError(NmtError):
    """Another process is writing the run directory (`nmt train` holds its lock)."""

    exit_code = 2


class TrainingError(NmtError):
    """Training cannot go on (e.g. too many consecutive non-finite losses)."""


class DiskFullError(CheckpointError):
    """The run directory's device has no room for a checkpoint; earlier checkpoints are kept."""

    exit_code = 1
