"""Run one stage in this process: `python -m tvc.stages NAME CONFIG [COMMAND]`.

The recipe runner starts each stage this way, in a child process of its own: the stage is
isolated and a killed run leaves finished stages intact, yet no command line is parsed. CONFIG
is the stage config's fields as JSON, inline or in a file; COMMAND is the equivalent `tvc ...`
command, recorded in the artifacts so each number says how to reproduce it. Errors end as one
line and the exit codes of the command line (see tvc.errors and tvc.boundary).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from pathlib import Path

from tvc.boundary import as_user_error, internal_error_line
from tvc.errors import ConfigError


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s", stream=sys.stderr)
    try:
        if len(argv) not in (2, 3):
            raise ConfigError(
                "usage: python -m tvc.stages NAME CONFIG.json [COMMAND]",
                "name a stage (train, compress, export, eval, bench, report) and its config file",
            )
        from tvc.artifact import record_command
        from tvc.stages import get_stage

        stage = get_stage(argv[0])
        try:  # inline JSON (as the recipe runner passes it) or a file holding it
            text = argv[1] if argv[1].lstrip().startswith("{") else Path(argv[1]).read_text()
            values = json.loads(text)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the stage config {argv[1]} ({exc})",
                              "pass a JSON file of the stage's options") from exc  # fmt: skip
        record_command(argv[2] if len(argv) == 3 else None)
        stage.run(stage.config.parse(values, origin=f"{stage.name} option"))
        return 0
    except KeyboardInterrupt:
        print("error: interrupted; earlier results are left intact", file=sys.stderr)
        return 130
    except Exception as exc:
        err = as_user_error(exc)
        if err is None:
            if os.environ.get("TVC_DEBUG"):
                traceback.print_exc()
            print(internal_error_line(exc), file=sys.stderr)
            return 70
        print(f"error: {err.message}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
