"""The error types of data_prep: user-facing, one-line messages naming the file, line, field or value.
(Tokenizer problems raise pipeline.data.tokenizer.TokenizerError; the CLI reports both the same way.)

Exit statuses follow launch/train.py: 2 = something the user must fix (input, argument, output folder), 3 = the
run itself failed (re-running the same command resumes it)."""


class DataPrepError(RuntimeError):
    exit_status = 2


class RunFailure(DataPrepError):
    """The run broke for a reason outside the inputs and arguments (a worker process died)."""
    exit_status = 3
