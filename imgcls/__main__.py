"""`python -m imgcls train ...`: the same as the installed `imgcls` command."""

from .commands import console

if __name__ == "__main__":
    console()
