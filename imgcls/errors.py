"""One exception type for mistakes a user can fix (bad flag, missing file, unreadable data set).

The command-line entry points catch it and print its message on one line with a non-zero exit code and no
traceback; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input: the message names the file/row/flag and says what to do."""
