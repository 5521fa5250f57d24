"""Fixtures for the gateway's tests: a host on a fake clock, its gateway, an Alipay app.

Shared by the Alipay and WeChat tests: add a fixture here rather than a second conftest.
"""

from __future__ import annotations

import shutil

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from posterm.host import Host
from posterm.host.gateway import Gateway
from posterm.host.gateway import apps
from posterm.host.gateway.keys import GatewayKeys
from tests.host.conftest import Clock

MERCHANT = "M100000001"
ALIPAY_APP_ID = "2021000000000001"
CODE = {n: f"28990000000000000{n}" for n in range(1, 9)}


@pytest.fixture(scope="session")
def app_private_key():
    """The merchant app's RSA key pair (made once: RSA generation is slow)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def app_private_pem(app_private_key) -> str:
    return app_private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                         serialization.NoEncryption()).decode()


@pytest.fixture(scope="session")
def app_public_pem(app_private_key) -> str:
    return app_private_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture(scope="session")
def host_template(tmp_path_factory):
    """A host database with the demo data and its HSM, made once (the demo accounts'
    payment-password verifiers are slow by design); each test gets a copy."""
    d = tmp_path_factory.mktemp("host-template") / "host"
    Host.open(d / "host.db").close()
    return d


@pytest.fixture
def host(tmp_path, clock, host_template):
    d = tmp_path / "host"
    shutil.copytree(host_template, d)
    h = Host.open(d / "host.db", clock=clock, outage_seconds=30.0, phone_delay=2.0)
    yield h
    assert h.check_books() == []
    h.close()


@pytest.fixture(scope="session")
def gateway_keys(tmp_path_factory):
    """The gateway's keys, made once for the session (RSA generation is slow)."""
    return GatewayKeys.open(tmp_path_factory.mktemp("gwkeys") / "hsm")


@pytest.fixture
def gateway(host, gateway_keys):
    return Gateway(host, keys=gateway_keys)


@pytest.fixture
def alipay_app(gateway, app_public_pem):
    return apps.add(gateway.ctx, gateway.keys, ALIPAY_APP_ID, MERCHANT, public_key_pem=app_public_pem)


@pytest.fixture
def notifier(gateway):
    from posterm.host.gateway.notify import Notifier
    return Notifier(gateway, poll_s=0.05, backoff_s=5.0)


@pytest.fixture
def server(gateway, notifier, monkeypatch):
    """The gateway over HTTP (uvicorn in a thread on 127.0.0.1:0), stopped within a bound."""
    from posterm.host.gateway.http import GatewayServer

    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    srv = GatewayServer(gateway, "127.0.0.1:0", notifier=notifier)
    yield srv
    srv.close(timeout=5.0)


@pytest.fixture
def sdk(server, alipay_app, app_private_pem):
    """python-alipay-sdk 3.4.0, unmodified, pointed at the gateway (its only change: the address)."""
    from alipay import AliPay

    client = AliPay(appid=ALIPAY_APP_ID, app_notify_url=None, app_private_key_string=app_private_pem,
                    alipay_public_key_string=server.gateway.keys.public_pem(), sign_type="RSA2")
    client._gateway = server.address + "/gateway.do"
    return client
