"""posterm: drive payment terminals, emulate them, and emulate the host behind them."""

__version__ = "0.1.0"
