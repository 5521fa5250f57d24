"""The values that cross the firmware's edge: who the terminal is, how it is tuned, what it
asks the host and the customer's wallet to do, and what an ECR front reports back."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from posterm.families.events import ResultDelivery  # noqa: F401  a front reports it to the firmware
from firmware_protocol.host import messages as h
from firmware_protocol.native import messages as m
from firmware_protocol.native.messages import Outcome, Reason

FIRMWARE_VERSION = "posterm-emu 0.1.0"
CAPABILITIES = (m.Capability.SCANNER | m.Capability.PIN_PAD | m.Capability.PRINTER | m.Capability.DYNAMIC_QR
                | m.Capability.PHONE_CONFIRM | m.Capability.REFUND | m.Capability.SETTLEMENT
                | m.Capability.KEY_LOADING)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the terminal is; the host checks it at logon."""

    terminal_id: str = "T0000001"
    merchant_id: str = "M100000001"
    firmware_version: str = FIRMWARE_VERSION
    location: str = "CN-SH"


@dataclass(frozen=True, slots=True)
class FirmwareConfig:
    """Timers and bounds, in seconds. The polling defaults are Alipay face-to-face's."""

    poll_interval: float = 5.0       # phone confirmation / QR: query the host this often
    poll_attempts: int = 5           # ... this many times, then cancel
    scan_timeout: float = 60.0
    pin_timeout: float = 60.0
    qr_timeout: float = 120.0
    host_timeout: float = 10.0       # one host request
    query_attempts: int = 3          # PROCESSING answers before giving up as unknown
    query_delay: float = 1.0
    keepalive: float = 4.0           # re-send Progress while the customer dawdles (< the 5 s promise)
    print_time: float = 0.0
    reconcile_base: float = 1.0      # back-off of the background reconciler: base * 2**n ...
    reconcile_max: float = 60.0      # ... capped here
    error_recovery: float = 1.0
    # Look a new order id up at the host before authorising it (one HostQuery, about 1 ms
    # in process): the only way, on this host protocol, to tell that another terminal of
    # the merchant already took that order id. Off only if the ECR makes ids unique per terminal.
    check_new_orders: bool = True
    # An order left unfinished (the ECR got UNKNOWN, or no answer at all) is reversed at the
    # host when reconciled, even if the host approved it. For ECR protocols with no query
    # (Concert): there the ECR was told "not processed" and cannot learn otherwise, so a
    # payment the host approved meanwhile must be given back, not kept. With it, an approval
    # stays in flight in the journal until the front reports ResultDelivery: one the ECR never
    # acknowledged is reversed too (and a restart before the report reverses it as well).
    void_unfinished: bool = False

    def __post_init__(self) -> None:
        for name in ("poll_interval", "scan_timeout", "pin_timeout", "qr_timeout", "host_timeout",
                     "keepalive", "reconcile_base", "reconcile_max"):
            if not getattr(self, name) > 0:
                raise ValueError(f"FirmwareConfig.{name} must be positive")
        if self.poll_attempts < 1 or self.query_attempts < 1:
            raise ValueError("FirmwareConfig attempts must be at least 1")

    def with_overrides(self, overrides: dict[str, float]) -> "FirmwareConfig":
        return replace(self, **{k: (int(v) if k == "poll_attempts" else float(v)) for k, v in overrides.items()})


@dataclass(frozen=True, slots=True)
class HostCall:
    """A request for the host link to perform; the answer comes back through on_host_reply."""

    token: int
    message: h.HostMessage
    timeout: float


@dataclass(frozen=True, slots=True)
class WalletCall:
    """The customer's wallet acting at the host (not through the terminal)."""

    kind: str                 # "scan_qr" | "confirm"
    order_id: str
    qr_data: str | None = None
    code: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class ScenarioResult:
    order_id: str
    expected: Outcome | None
    expected_reason: Reason | None
    outcome: Outcome
    reason: int

    @property
    def ok(self) -> bool:
        return ((self.expected is None or self.expected == self.outcome)
                and (self.expected_reason is None or self.expected_reason == self.reason))
