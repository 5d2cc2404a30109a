"""modbench: the packages of the checkout installed under one namespace, so that their names collide with no
other code base's. The folders keep the names the project is known by; pyproject.toml maps them:
modbench.models -> models/ (the model library), modbench.suite -> suite/ (CLI, runner, training,
reproduction, tables), modbench.tasks -> tasks/ (lmms-eval tasks, fixtures, the scene corpus)."""
