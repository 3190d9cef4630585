"""``python -m cytopipe.simulate``: write a simulated study (see :func:`cytopipe.simulate.cli.main`)."""

from cytopipe.simulate.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
