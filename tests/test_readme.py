"""The README's commands work as written: every `pulse-fm` command names a real subcommand and
real flags, every `make` target exists, every linked file exists, and the gateway snippets (the
client heredoc, both curl calls) run against a live gateway on the shipped model."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from pulsefm.cli import main as cli

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BASH = [b for b in re.findall(r"```bash\n(.*?)```", README, flags=re.S)]


def commands(prefix: str) -> list[str]:
    """Lines of the README's bash blocks that start with `prefix`, continuation lines joined."""
    text = "\n".join(BASH).replace("\\\n", " ")
    return [ln.split("#")[0].strip() for ln in text.splitlines() if ln.strip().startswith(prefix)]


def help_text(sub: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        cli([sub, "--help"])
    return out.getvalue()


@pytest.mark.parametrize("line", commands("pulse-fm "))
def test_pulse_fm_commands_use_real_flags(line: str) -> None:
    words = shlex.split(line.split(";")[0])
    sub = words[1]
    text = help_text(sub)
    for flag in [w.split("=")[0] for w in words[2:] if w.startswith("--")]:
        assert re.search(rf"(^|\s){re.escape(flag)}[\s,=]", text, flags=re.M), f"{line}: {flag} not in --help"


def test_make_targets_and_links_exist() -> None:
    targets = set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), flags=re.M))
    for target in re.findall(r"`make ([a-z-]+)`", README) + [c.split()[1] for c in commands("make ")]:
        assert target in targets, target
    for link in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README):
        if not link.startswith("http"):
            assert (ROOT / link).exists(), link
    assert len(README.splitlines()) <= 300
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text()
        assert "shared/" not in text, doc  # the project carries its own copies (docs/recipe.md, data.md)
        for link in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
            if not link.startswith("http"):
                assert (doc.parent / link).exists(), (doc, link)


def test_gateway_snippets_run_against_a_live_gateway(tmp_path: Path) -> None:
    from service.app import create_app
    from service.settings import Settings
    from tests.gateway_helpers import ServerThread

    snippet = re.search(r"python - <<'PY'\n(.*?)\nPY", README, flags=re.S)
    assert snippet is not None
    curls = [c for c in commands("curl ")]
    assert len(curls) == 2
    settings = Settings()  # the shipped model_repository
    with ServerThread(create_app(settings), settings) as server:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(snippet.group(1).replace("http://127.0.0.1:8080", server.url), {})
        printed = out.getvalue().splitlines()
        assert printed[0] == "(1, 256)" and "age" in printed[1]
        for line in curls:  # /readyz, and a recording file uploaded to /v1/predict
            cmd = shlex.split(line.replace("http://127.0.0.1:8080", server.url))
            r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=60)
            assert r.returncode == 0 and ('"ready":true' in r.stdout or '"windows_used":2' in r.stdout), (
                r.stdout
            )
        (client_block,) = re.findall(r"```python\n(.*?)```", README, flags=re.S)
        out = io.StringIO()
        with contextlib.chdir(ROOT), contextlib.redirect_stdout(out):
            exec(client_block.replace("http://127.0.0.1:8080", server.url), {})
        printed = out.getvalue().splitlines()
        assert printed[0] == "(2, 256) [0.0, 30.0]" and "out_of_distribution" in printed[1], printed
