"""modbench: the packages of the checkout installed under one namespace, so that their names collide with no
other code base's. The folders keep the names the project is known by; pyproject.toml maps them:
modbench.models -> models/ (the model library), modbench.suite -> suite/ (CLI, runner, training,
reproduction, tables), modbench.tasks -> tasks/ (lmms-eval tasks, fixtures, the scene corpus)."""

# Run from the checkout with a non-editable install, this folder (holding only the namespace's __init__ and
# __main__) comes first on sys.path and would hide the installed subpackages: extend the path to them.
__path__ = __import__("pkgutil").extend_path(__path__, __name__)
