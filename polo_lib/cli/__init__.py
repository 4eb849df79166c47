"""`polo`: argparse and one small handler per subcommand; the work is in the library.

    polo run cpu --set epochs=1 --set training.learning_rate=5e-4
    polo run params/my.yaml --stages prepare,train --run-id 20261130-...-cpu-1a2b3c4d
    polo demo | preflight | plan | queue | sweep | list | compare | report | export | explain | serve | chat | rate

Params and overrides are validated before any notebook starts (pipeline.run_pipeline); a
PoloError prints as one message and exits 2. No polo_lib module imports this one.

  common           --set parsing, the help format, terminal width, JSON output, quiet Unsloth imports, API keys
  run_commands     run, demo, preflight, plan, queue, list, report, sweep
  eval_commands    compare (paired statistics), judge (an LLM judge), rate (people's blind ratings)
  deploy_commands  export, install-converter, explain, serve, chat
  parser           the argument parser and `main`
"""
import sys

from .common import _Help, _unsloth_first, parse_sets  # noqa: F401
from .deploy_commands import cmd_chat, cmd_explain, cmd_export, cmd_install_converter, cmd_serve  # noqa: F401
from .eval_commands import cmd_compare, cmd_judge, cmd_rate  # noqa: F401
from .parser import build_parser, main  # noqa: F401
from .run_commands import cmd_demo, cmd_list, cmd_plan, cmd_preflight, cmd_queue, cmd_report, cmd_run, cmd_sweep  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
