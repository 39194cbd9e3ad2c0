"""``python -m pyvirtiofsd.guest``: the same as the ``pyvirtiofsd-guest`` command."""
import sys

if __name__ == "__main__":   # importing this module (e.g. to preload a package) runs nothing
    from . import main

    sys.exit(main(prog="python -m pyvirtiofsd.guest"))
