"""The one exception type users see: a problem with their input, stated in one line."""


class PimgptError(Exception):
    """Bad input (config, checkpoint, binary, trace or CLI value); the message names the problem.

    The CLI prints ``pimgpt: error: <message>`` and exits with status 2.
    """
