from __future__ import annotations

import json

from click.testing import CliRunner

from posterm.cli import main


def test_dukpt_prints_only_kcvs(tmp_path):
    bdk = "0123456789ABCDEFFEDCBA9876543210"
    (tmp_path / "bdk").write_text(bdk)
    r = CliRunner().invoke(main, ["crypto", "dukpt", "--bdk-file", str(tmp_path / "bdk"),
                                  "--ksn", "FFFF9876543210E00001", "--json"])
    assert r.exit_code == 0
    out = json.loads(r.output)
    assert set(out["kcv"]) == {"pin", "mac_request", "mac_response"}
    assert bdk not in r.output and "042666B49184CFA368DE9628D0397BC9" not in r.output


def test_tr31_inspect_and_bad_input():
    block = "B0080P0TE00E000094B420079CC80BA3461F86FE26EFC4A3B8E4FA4C5F5341176EED7B727B8A248E"
    r = CliRunner().invoke(main, ["crypto", "tr31", "inspect", block, "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["usage"] == "P0"
    r = CliRunner().invoke(main, ["crypto", "tr31", "inspect", "garbage"])
    assert r.exit_code == 2 and "Traceback" not in r.output


def test_pinblock_reads_pin_from_prompt(tmp_path):
    (tmp_path / "k").write_text("00112233445566778899AABBCCDDEEFF")
    r = CliRunner().invoke(main, ["crypto", "pinblock", "--pan", "4111111111111111", "--key-file",
                                  str(tmp_path / "k")], input="1234\n")
    assert r.exit_code == 0 and len(r.output.strip().splitlines()[-1]) == 32
