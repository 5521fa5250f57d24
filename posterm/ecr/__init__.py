"""The ECR side, protocol-independent: what every family's driver shares.

``results``  what operations return (PaymentResult, RefundOutcome, Settlement, TerminalInfo,
             KeyInfo, OutcomeMismatch) and the reason helpers
``ids``      order ids (new_order_id)
``session``  the port session (PortSession: port, journal, close, reconnect), the timeout bounds,
             and open_terminal, which opens a family's driver through the registry
``journal``  what was sent and what became of it (SQLite)
``trace``    masking and hex dumps shared by every family's traces and recordings

Imports nothing: ``ids``, ``trace`` and ``results`` are leaves that record/ and the families
may use; ``session`` sits above record/ (a driver records through it), so record/ never
imports it.
"""
