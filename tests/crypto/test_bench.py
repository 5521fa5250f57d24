"""`python -m posterm.bench crypto` stays runnable: every figure computed once (no timing here)."""

from __future__ import annotations

import json

from posterm.bench import crypto as bench_crypto


def test_crypto_bench_emits_every_figure(monkeypatch, capsys):
    calls = []

    def once(fn, *args, **kwargs):
        calls.append(fn())  # each measured operation really runs
        return 1000.0
    monkeypatch.setattr(bench_crypto, "rate", once)
    assert bench_crypto.main([]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    metrics = {x["metric"] for x in lines}
    assert {"pin_block_iso4_encrypt", "aes_dukpt_transaction_key", "tdes_dukpt_transaction_key",
            "pinpad_signed_messages", "hsm_verify_request_macs", "hsm_response_macs_same_ksn",
            "pinpad_pin_entries", "hsm_verify_pins"} <= metrics
    assert all(x["bench"] == "crypto" and x["unit"] == "ops/s" for x in lines)
    check = calls[-1]
    assert check.match  # the PIN verified through the real pad and HSM
    for bdk in ("aes128", "aes192", "aes256"):  # every BDK type and every working key type it may derive
        assert {f"aes_dukpt_initial_key_{bdk}", f"aes_dukpt_transaction_key_{bdk}"} <= metrics
    assert {"aes_dukpt_working_key_aes256_" + w for w in ("tdes2", "tdes3", "aes128", "aes192", "aes256")} <= metrics
    assert "aes_dukpt_working_key_aes128_aes256" not in metrics   # X9.24-3 6.1.3 forbids it
