"""The one error type of data_prep: a user-facing, one-line message naming the file, line, field or value."""


class DataPrepError(RuntimeError):
    pass
