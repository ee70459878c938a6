"""The one exception type for user mistakes.

Anything the user can fix (a bad path, an unknown name, a value out of range) raises
`UserError` with a one-line message naming the file or field and the fix; the CLI prints it
as `error: <message>` and exits with code 2, never a traceback.
"""


class UserError(Exception):
    """A mistake in the user's input; the message is shown as one line, exit code 2."""
