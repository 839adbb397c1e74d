"""Every method line of the launchers parses with that method's flags (catches drift between scripts and CLIs)."""
import importlib
import os
import re
import shlex

import pytest

from evaluation.run.args import build_parser

CODE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIABLE = re.compile(r"\$\{?(\w+)(?::-([^}]*))?\}?")


def read_script(script, environment):
    """The script's variables (their defaults) and its method lines: (method, arguments, active)."""
    variables, lines = dict(environment), []
    with open(os.path.join(CODE, "scripts", script)) as f:
        for line in f:
            assignment = re.match(r"(\w+)=(.*)$", line.strip())
            if assignment:
                variables[assignment.group(1)] = expand(assignment.group(2).strip('"'), variables)   # as the shell
            call = re.match(r"\s*(#?)\s*\$PYTHON -m evaluation\.inference_(\w+) (.*)", line)
            if call:
                lines.append((call.group(2), call.group(3), not call.group(1)))
    return variables, lines


def expand(text, variables):
    """$NAME, ${NAME} and ${NAME:-default} with the values assigned so far; unset names become X."""
    return VARIABLE.sub(lambda m: variables.get(m.group(1), m.group(2) if m.group(2) is not None else "X"), text)


@pytest.mark.parametrize("mode", ["eager", "static"])
@pytest.mark.parametrize("script", ["qwen3.sh", "deepseek.sh"])
def test_launcher_lines_parse(script, mode):
    # (deepseek.sh's SpS needs a draft model; ENGINE_MODE as a user sets it)
    variables, lines = read_script(script, {"SPS_DRAFTER_PATH": "draft-model", "ENGINE_MODE": mode})
    assert sum(active for _, _, active in lines) >= 10   # every built method runs under multi-round thinking
    for method, rest, _ in lines:
        module = importlib.import_module(f"evaluation.inference_{method}")
        parser = build_parser(method)
        if hasattr(module, "add_args"):
            module.add_args(parser)
        args = parser.parse_args(shlex.split(expand(rest, variables)))
        assert args.model_path and args.model_id and args.max_new_tokens == 15000, (method, rest)
        assert args.engine_mode == mode and ("-static-" in args.model_id) == (mode == "static"), args.model_id
        if method == "eagle3":
            assert args.ea_model_path
