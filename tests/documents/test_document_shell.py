"""The shell-aware substitution behind ENV_VAR, as pure input -> output cases."""

from __future__ import annotations

import pytest

from corral.documents.shell import substitute

V = '"${SSM_v}"'  # the reference as written in an unquoted position

CASES = [
    # (template, rendered)
    ("echo {{ v }}", f"echo {V}"),
    ('echo "a {{v}} b"', 'echo "a ${SSM_v} b"'),
    ("echo 'a {{ v }}'", f"echo 'a '{V}''"),
    ("echo $'a\\'{{ v }}'", f"echo $'a\\''{V}$''"),
    ('echo "\\"{{ v }}"', 'echo "\\"${SSM_v}"'),
    ("echo \\'{{ v }}", f"echo \\'{V}"),
    ('echo "$(f {{ v }})"', f'echo "$(f {V})"'),
    ('echo "$(f "(" {{ v }}) {{ v }}"', f'echo "$(f "(" {V}) ${{SSM_v}}"'),
    ("echo $( (f) {{ v }})", f"echo $( (f) {V})"),
    ('echo "`f {{ v }}`"', f'echo "`f {V}`"'),
    ("echo `f {{ v }}` {{ v }}", f"echo `f {V}` {V}"),
    ("a#{{ v }}", f"a#{V}"),
    ("# don't {{ v }}\necho {{ v }}", f"# don't ${{SSM_v}}\necho {V}"),
    ("cat <<<{{ v }}", f"cat <<<{V}"),
    ("cat <<EOF\n'{{ v }}'\nEOF\necho {{ v }}", f"cat <<EOF\n'${{SSM_v}}'\nEOF\necho {V}"),
    ('cat <<"E"\n{{ v }}\nE', 'cat <<"E"\n${SSM_v}\nE'),
    ("cat <<\\E\n{{ v }}\nE", "cat <<\\E\n${SSM_v}\nE"),
    ("cat <<-E\n\t{{ v }}\n\tE\n{{ v }}", f"cat <<-E\n\t${{SSM_v}}\n\tE\n{V}"),
    ("cat <<A <<B\n{{ v }}\nA\n{{ v }}\nB\n{{ v }}", "cat <<A <<B\n${SSM_v}\nA\n${SSM_v}\nB\n" + V),
    ("cat <<E\n{{ v }}", "cat <<E\n${SSM_v}"),  # unterminated here-document
    ("x << y {{ v }}", f"x << y {V}"),
    ("echo {{ p }} {{ v }} {{ q }}", f"echo P {V} {{{{ q }}}}"),
    ("echo 'open {{ v }}", f"echo 'open '{V}'"),  # unterminated quote: still no paste
    ("echo \\", "echo \\"),
    ("{{v}}{{v}}", V + V),
]


@pytest.mark.parametrize(("template", "rendered"), CASES)
def test_substitute(template: str, rendered: str) -> None:
    assert substitute(template, {"p": "P"}, {"v": "SSM_v"}) == rendered


def test_pasted_values_do_not_change_quoting_state() -> None:
    assert substitute("echo {{ p }} {{ v }}", {"p": "'\""}, {"v": "SSM_v"}) == f"echo '\" {V}"
