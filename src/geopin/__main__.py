"""`python -m geopin`: the same as the `geopin` command (useful where scripts are not on PATH)."""

from geopin.cli import main

if __name__ == "__main__":
    main()
