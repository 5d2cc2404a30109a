"""`python -m modbench`: the `modbench` command (also what torchrun and accelerate launch run: `-m modbench`)."""

from modbench.suite.cli import main

raise SystemExit(main())
