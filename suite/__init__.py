"""modbench suite: the CLI, profilers and results schema."""
