"""Runs a user can trust: each failure found by trying to break the trainer, reproduced with a
real subprocess run on the bundled corpus (like tests/test_train.py), fixed and kept fixed."""
import json
import sys

import pytest
import yaml

from tests.test_train import TINY, records, run_cli, tiny


# 3. floats in exponent form were refused (flags went through json.dumps -> PyYAML, whose
#    YAML 1.1 float pattern needs a dot: "5e-05" was a string)
@pytest.mark.parametrize("how", ["flag", "flag-decimal", "set", "yaml"])
def test_floats_in_exponent_form_are_accepted(tmp_path, how):
    extra = {"flag": ["--learning-rate", "5e-5"], "flag-decimal": ["--learning-rate", "0.00005"],
             "set": ["--set", "optimizer.lr=5e-5"], "yaml": []}[how]
    cfg = TINY
    if how == "yaml":
        data = yaml.safe_load(open(TINY))
        data["optimizer"]["lr"] = "LR"
        cfg = tmp_path / "exp.yaml"
        cfg.write_text(yaml.safe_dump(data).replace("LR", "5e-5"))
    args = tiny(tmp_path, *extra, steps=1)
    args[1] = str(cfg)
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    written = yaml.safe_load((tmp_path / "tiny" / "config.yaml").read_text())
    assert written["optimizer"]["lr"] == 5e-5
    start = records(tmp_path / "tiny", "start")[0]
    assert start["config"]["optimizer"]["lr"] == 5e-5
