"""Payment cryptography for posterm, split along the terminal/host trust boundary.

``posterm.crypto.common``
    Primitives both sides share: typed :class:`~posterm.crypto.common.Key` objects that
    refuse uses other than their own, AES/TDES CMAC, key check values, ISO 9564-1 PIN
    blocks (formats 0, 3, 4), TR-31 key blocks (versions B and D; A and C read-only), AES DUKPT
    (ANSI X9.24-3) and TDES DUKPT (ANSI X9.24-1) derivation; salted scrypt verifiers
    (``posterm.crypto.verifier``, re-exported by ``common``).
``posterm.crypto.pinpad``
    The PIN pad's secure module: DUKPT state, PIN entry, request MACs, sealed persistence,
    the operator transaction password.  Never imports ``posterm.crypto.hsm``.
``posterm.crypto.hsm``
    The host's HSM: base derivation keys, key-block protection keys, PIN verification
    against payment-secret verifiers, response MACs.  Never imports
    ``posterm.crypto.pinpad``.

The import boundary is checked by the ``[tool.importlinter]`` contracts in
``pyproject.toml`` and by ``tests/crypto/test_boundary.py`` (which also runs ``lint-imports``).  This package ``__init__``
deliberately imports neither side, so importing one never loads the other.
"""
