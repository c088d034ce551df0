"""One module per command: parse its arguments, call the core, print. Each has
`add_parser(subparsers)` (argparse) and `run(args) -> exit status`; `train` hands what
follows it to Hydra."""
