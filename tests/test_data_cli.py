"""`harness data pull/verify` and the CLI's help texts."""
from __future__ import annotations

import shutil

import pytest

from harness.cli import build_parser, main


def test_pull_from_mirror_verifies_sha256(tmp_path, data_dir, capsys):
    dest = tmp_path / "data"
    assert main(["data", "pull", "--from", str(data_dir), "--dest", str(dest), "mt_bench", "koala"]) == 0
    assert (dest / "mt_bench/question.jsonl").read_bytes() == (data_dir / "mt_bench/question.jsonl").read_bytes()
    assert main(["data", "verify", "--dest", str(dest)]) == 0
    # a corrupted mirror is refused and nothing is left half-copied
    mirror = tmp_path / "mirror"
    shutil.copytree(data_dir / "koala", mirror / "koala")
    (mirror / "koala/koala_test_set.jsonl").chmod(0o644)
    with open(mirror / "koala/koala_test_set.jsonl", "a") as f:
        f.write("tampered\n")
    dest2 = tmp_path / "data2"
    code = main(["data", "pull", "--from", str(mirror), "--dest", str(dest2), "koala"])
    assert code == 2 and "sha256 mismatch" in capsys.readouterr().err
    assert not (dest2 / "koala").exists()


@pytest.mark.parametrize("cmd", [["run"], ["generate"], ["judge"], ["leaderboard"], ["leaderboard", "mt_bench"],
                                 ["data"], ["data", "pull"], ["models", "prepare"], ["serve"], ["bench", "build"]])
def test_every_command_explains_itself(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(cmd + ["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: harness" in out and len(out.splitlines()) > 3
