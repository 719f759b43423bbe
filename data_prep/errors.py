"""The error type of data_prep: a user-facing, one-line message naming the file, line, field or value.
(Tokenizer problems raise pipeline.data.tokenizer.TokenizerError; the CLI reports both the same way.)"""


class DataPrepError(RuntimeError):
    pass
