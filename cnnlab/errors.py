"""The one error type for bad user input: the CLI prints its message and exits with status 2."""


class CnnlabError(Exception):
    """Bad input (config, file, data, URL): the message names what is wrong and what is allowed."""
