"""The merchant gateway: Alipay and WeChat Pay merchant APIs in front of the host.

:mod:`.core` (:class:`Gateway` over a :class:`~posterm.host.service.Host`: pay, query,
cancel, close, refund, refund query, precreate, as the host's own service calls),
:mod:`.apps` (merchant apps and their virtual terminals), :mod:`.keys` (the gateway's RSA
key pair and the WeChat API keys, sealed beside the HSM), :mod:`.alipay` / :mod:`.wechat`
(the wallets' wire protocols and signatures), :mod:`.notify` (asynchronous notifications),
:mod:`.http` (the Starlette app and the uvicorn server on loopback).
"""

from posterm.host.gateway.core import (
    App,
    CancelResult,
    Gateway,
    GatewayError,
    GatewayUnavailable,
    InvalidRequest,
    RefundResult,
    Settlement,
    Trade,
    UnknownApp,
    format_amount,
    parse_amount,
)

__all__ = ["App", "CancelResult", "Gateway", "GatewayError", "GatewayUnavailable", "InvalidRequest", "RefundResult",
           "Settlement", "Trade", "UnknownApp", "format_amount", "parse_amount"]
