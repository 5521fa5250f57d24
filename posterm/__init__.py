"""posterm: drive payment terminals, emulate them, and emulate the host behind them.

    import posterm

    with posterm.Terminal.open("/dev/ttyUSB0") as term:          # posterm's own protocol
        result = term.pay(1234, "CNY", order_id=posterm.new_order_id())
    with posterm.open_terminal("/dev/ttyACM0", protocol="concert") as term:   # any registered family
        ...

The names below load on first use (module ``__getattr__``), so ``import posterm`` stays
cheap: ``Terminal`` (the default family's ECR driver, from the registry), ``open_terminal``,
``new_order_id`` and the results (``PaymentResult``, ``RefundOutcome``, ``Settlement``,
``TerminalInfo``, ``KeyInfo``, ``Outcome``, ``Reason``, ``OutcomeMismatch``).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> the module that defines it. Loaded on first use, and never imported here at all (not
# even under TYPE_CHECKING): every module imports posterm for __version__, so an import here
# would put the ECR side above everything in the import graph.
_LAZY = {
    "open_terminal": "posterm.ecr.session",
    "new_order_id": "posterm.ecr.ids",
    **{name: "posterm.ecr.results" for name in (
        "PaymentResult", "RefundOutcome", "Settlement", "TerminalInfo", "KeyInfo", "Outcome", "Reason",
        "OutcomeMismatch")},
}

__all__ = ["KeyInfo", "Outcome", "OutcomeMismatch", "PaymentResult", "Reason", "RefundOutcome", "Settlement",
           "Terminal", "TerminalInfo", "__version__", "new_order_id", "open_terminal"]


def __getattr__(name: str) -> Any:
    if name == "Terminal":
        # The ECR driver of the default family ("posterm"), as the registry names it.
        from posterm.families import family

        value = family("posterm").driver_class()
    elif name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    else:
        raise AttributeError(f"module 'posterm' has no attribute {name!r}")
    globals()[name] = value   # loaded once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
