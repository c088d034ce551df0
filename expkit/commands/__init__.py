"""One module per command: parse its arguments, call the core, print. Each has
`add_parser(subparsers)` (argparse) and `run(args) -> exit status`; `train` hands what
follows it to Hydra."""


TRUST_HELP = ("import the own code the run names (model.factory, data.factory, init.function) even when it is "
              "not the file the run recorded (a received run folder, code edited since); code inside a run folder "
              "is never imported")


def add_trust_flag(parser, help: str = TRUST_HELP) -> None:
    """--trust-code, on every command that reads a run folder (eval, predict, export, resume, reproduce)."""
    parser.add_argument("--trust-code", action="store_true", help=help)
