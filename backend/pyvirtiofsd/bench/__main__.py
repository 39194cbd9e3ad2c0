import sys

if __name__ == "__main__":   # importing this module (e.g. to preload a package) runs nothing
    from .cli import main

    sys.exit(main())
